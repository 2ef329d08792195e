"""One rollout: CWM's agent protocol turn by turn (docs/protocol.md §2 to §6, §9).

The loop follows the CWM evaluation environment step for step, so the model
sees the budgets and errors it was trained on:

1. the reply is counted (turn and tokens) before anything else; past the
   context size the episode fails, and the reply numbered `max_turns` is not
   executed;
2. a reply without a usable tool call is the final summary if a patch was
   already submitted, otherwise a format error answered as a user message;
3. a tool call runs in the sandbox and comes back as a `tool: NAME` message
   with the budget notice.

`Rollout.step` is one turn: `query` (1), then `execute` (3) or the format
error's `answer` (2); every way an episode ends is one `RolloutEnd`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from docker.errors import DockerException
from pydantic import BaseModel, Field
from requests import RequestException

from cwm_agent.agent.trajectory import (
    MessageRecord,
    Status,
    ToolCallRecord,
    ToolResultRecord,
    Trajectory,
)
from cwm_agent.model.policy import Completion, Policy, PolicyError
from cwm_agent.model.tokens import (
    conversation_tokens,
    generation_prompt_tokens,
    message_counter,
)
from cwm_agent.protocol.chat import ASSISTANT, TOOL_ROLE_PREFIX, USER, Message
from cwm_agent.protocol.parsing import ParsedReply, ToolCall, parse_reply
from cwm_agent.protocol.prompts import (
    MAX_TOOL_MESSAGE_TOKENS,
    environment_prompt,
    issue_prompt,
    system_prompt,
    testgen_prompt,
    tool_result,
    tool_result_for_estimate,
    truncate_tool_message,
)
from cwm_agent.sandbox import WORKDIR, SandboxError, SandboxInterrupted
from cwm_agent.sandbox.config import DEFAULT_SESSION_TIMEOUT_S
from cwm_agent.tools import TOOL_NAMES, Toolbox
from cwm_agent.tools.result import readable

MessageObserver = Callable[[MessageRecord], None]
Checkpoint = Callable[[Trajectory], None]
# The container or the daemon went away: the rollout cannot go on.
_SANDBOX_LOST = (SandboxError, DockerException, RequestException, OSError)
_INTERRUPTS = (KeyboardInterrupt, SandboxInterrupted)


class RolloutConfig(BaseModel):
    """Budgets of one rollout; the defaults are CWM's SWE-bench evaluation settings."""

    task: Literal["issue", "testgen"] = "issue"
    max_turns: int = Field(128, ge=1)
    context_size: int = Field(131_072, gt=0)
    max_reply_tokens: int = Field(65_536, gt=0)
    session_timeout: float = Field(
        DEFAULT_SESSION_TIMEOUT_S, gt=0, description="per bash call, in the prompt too"
    )
    max_duration_s: float | None = Field(
        None, gt=0, description="wall-time cap, checked before each reply is generated"
    )
    repo_root: str = WORKDIR


class RolloutEnd(Exception):
    """The one way an episode ends: a step raises it with the status and reason the
    trajectory keeps (`RolloutEnd.of` turns a failure or an interrupt into one)."""

    def __init__(self, status: Status, reason: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason

    @classmethod
    def of(cls, exc: BaseException) -> RolloutEnd:
        """The end a step raised, or the one a model failure, a lost sandbox or an
        interrupt brings."""
        if isinstance(exc, RolloutEnd):
            return exc
        if isinstance(exc, PolicyError):
            return cls("error", f"model: {exc}")
        if isinstance(exc, _INTERRUPTS):
            return cls("interrupted", f"interrupted ({str(exc) or 'Ctrl-C'})")
        return cls("error", f"sandbox: {type(exc).__name__}: {exc}")


def run_rollout(
    policy: Policy,
    toolbox: Toolbox,
    issue: str,
    config: RolloutConfig,
    observer: MessageObserver | None = None,
    checkpoint: Checkpoint | None = None,
) -> Trajectory:
    """Run one episode to its end; the trajectory says how it ended (never raises for
    model, tool or sandbox failures: they end the episode with status `error`).

    `checkpoint` gets the trajectory after every message, so an interrupted run
    keeps what it did; an interrupt marks it `interrupted` and goes on up."""
    return Rollout(policy, toolbox, issue, config, observer, checkpoint).run()


class Rollout:
    """One episode's state: the conversation, its token count and its trajectory."""

    def __init__(
        self,
        policy: Policy,
        toolbox: Toolbox,
        issue: str,
        config: RolloutConfig,
        observer: MessageObserver | None,
        checkpoint: Checkpoint | None,
    ) -> None:
        self.policy, self.toolbox, self.config = policy, toolbox, config
        self.observer, self.checkpoint = observer, checkpoint
        self.started = time.monotonic()
        self.tokenizer = policy.tokenizer
        self.count_user = message_counter(self.tokenizer, USER)
        prompt = issue_prompt if config.task == "issue" else testgen_prompt
        environment = environment_prompt(
            int(config.session_timeout), config.context_size, config.max_turns
        )
        self.messages = [
            Message.system(system_prompt(environment)),
            Message.user(prompt(issue, config.repo_root, self.count_user)),
        ]
        self.trajectory = Trajectory(
            task=config.task,
            model=policy.name,
            config=config.model_dump(),
            issue=issue,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.used = conversation_tokens(self.tokenizer, self.messages)
        self.reopen = generation_prompt_tokens(self.tokenizer)

    def run(self) -> Trajectory:
        """Steps until one raises the end; the trajectory is complete whatever ended it."""
        for message in self.messages:  # the system prompt and the task, as turn 0
            self.record(MessageRecord(role=message.role, content=message.content, turn=0))
        try:
            while True:
                self.step()
        except (RolloutEnd, PolicyError, *_SANDBOX_LOST, *_INTERRUPTS) as exc:
            end = RolloutEnd.of(exc)
            self.trajectory.status, self.trajectory.reason = end.status, end.reason
            if isinstance(exc, _INTERRUPTS):
                raise
        finally:
            self.trajectory.tokens_used = self.used
            self.trajectory.duration_s = time.monotonic() - self.started
            if self.checkpoint is not None:
                self.checkpoint(self.trajectory)
        return self.trajectory

    def step(self) -> None:
        """One turn: a reply, counted before anything else, then its tool call run or
        its format error answered (the final summary ends the episode instead)."""
        completion = self.query()
        parsed = parse_reply(completion.text, TOOL_NAMES)
        final = self.trajectory.submission is not None and parsed.is_final_response
        self.record(_reply_record(completion, parsed, self.trajectory.turns, final))
        if self.used > self.config.context_size:
            raise RolloutEnd(
                "context_exceeded",
                f"context size exceeded: {self.used} > {self.config.context_size}",
            )
        if self.trajectory.turns >= self.config.max_turns:
            raise RolloutEnd("max_turns", f"reached {self.config.max_turns} turns")
        if parsed.tool_call is not None:
            self.execute(parsed.tool_call)
        elif final:
            raise RolloutEnd("finished")
        else:
            assert parsed.error is not None
            feedback = truncate_tool_message(
                parsed.error.feedback, self.count_user, MAX_TOOL_MESSAGE_TOKENS
            )
            self.answer(Message.user(feedback), self.count_user)

    def query(self) -> Completion:
        """The next reply, if the wall time and the context leave room for one."""
        config, trajectory = self.config, self.trajectory
        if config.max_duration_s and time.monotonic() - self.started >= config.max_duration_s:
            raise RolloutEnd(
                "time_limit", f"reached the wall-time cap of {config.max_duration_s:g}s"
            )
        room = min(config.max_reply_tokens, config.context_size - self.used)
        if room <= 0:
            raise RolloutEnd(
                "context_exceeded",
                f"context size exceeded: {self.used} >= {config.context_size}, no room for a reply",
            )
        generated = time.monotonic()
        completion = self.policy.complete([self.messages], room)[0]
        trajectory.generation_s += time.monotonic() - generated
        trajectory.turns += 1
        trajectory.prompt_tokens += completion.prompt_tokens
        trajectory.completion_tokens += completion.completion_tokens
        self.used += completion.completion_tokens
        self.messages.append(
            Message.assistant(completion.text, completion.stop, completion.token_ids)
        )
        return completion

    def execute(self, call: ToolCall) -> None:
        """Run the call in the sandbox; its output goes back with the budget notice."""
        result = self.toolbox.run(call.name, call.argument)
        self.trajectory.tools_s += result.duration_s
        if result.submission is not None:
            self.trajectory.submission = readable(result.submission)
            self.trajectory.submission_bytes = result.submission.encode("utf-8", "surrogateescape")
        count_tool = message_counter(self.tokenizer, TOOL_ROLE_PREFIX + call.name)
        estimate = min(count_tool(tool_result_for_estimate(result.output)), MAX_TOOL_MESSAGE_TOKENS)
        body = truncate_tool_message(
            tool_result(
                result.output,
                remaining_turns=self.config.max_turns - self.trajectory.turns,
                remaining_tokens=self.config.context_size - self.used - estimate,
            ),
            count_tool,
            MAX_TOOL_MESSAGE_TOKENS,
        )
        self.answer(
            Message.tool(call.name, body),
            count_tool,
            duration_s=result.duration_s,
            tool_result=ToolResultRecord(
                output=result.output,
                ok=result.ok,
                exit_code=result.exit_code,
                duration_s=result.duration_s,
            ),
        )

    def answer(self, message: Message, count: Callable[[str], int], **fields: Any) -> None:
        """Add the answer to a reply to the conversation; its tokens are CWM's
        observation size: the message and the next generation prompt."""
        tokens = count(message.content) + self.reopen
        self.messages.append(message)
        self.used += tokens
        self.record(
            MessageRecord(
                role=message.role,
                content=message.content,
                turn=self.trajectory.turns,
                tokens=tokens,
                **fields,
            )
        )

    def record(self, message: MessageRecord) -> None:
        """Keep the message; the observer and the checkpoint see it at once."""
        self.trajectory.messages.append(message)
        if self.observer is not None:
            self.observer(message)
        if self.checkpoint is not None:
            self.checkpoint(self.trajectory)


def _reply_record(
    completion: Completion, parsed: ParsedReply, turn: int, final: bool
) -> MessageRecord:
    """The reply as generated, with the tool call or format error it was read as."""
    call = parsed.tool_call
    return MessageRecord(
        role=ASSISTANT,
        content=completion.text,
        turn=turn,
        stop=completion.stop,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        tokens=completion.completion_tokens,
        duration_s=completion.duration_s,
        tool_call=ToolCallRecord(name=call.name, argument=call.argument) if call else None,
        format_error=parsed.error.feedback if parsed.error and not final else None,
    )


__all__ = ["Checkpoint", "MessageObserver", "RolloutConfig", "RolloutEnd", "run_rollout"]
