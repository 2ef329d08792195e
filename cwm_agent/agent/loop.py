"""One rollout: CWM's agent protocol turn by turn (cwm-protocol.md §2 to §6).

The loop follows the CWM evaluation environment step for step, so the model
sees the budgets and errors it was trained on:

1. the reply is counted (turn and tokens) before anything else; past the
   context size the episode fails, and the reply numbered `max_turns` is not
   executed;
2. a reply without a usable tool call is the final summary if a patch was
   already submitted, otherwise a format error answered as a user message;
3. a tool call runs in the sandbox and comes back as a `tool: NAME` message
   with the budget notice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from docker.errors import DockerException
from pydantic import BaseModel, Field
from requests import RequestException

from cwm_agent.agent.trajectory import (
    MessageRecord,
    ToolCallRecord,
    ToolResultRecord,
    Trajectory,
)
from cwm_agent.model.policy import Policy, PolicyError
from cwm_agent.model.tokens import (
    conversation_tokens,
    generation_prompt_tokens,
    message_counter,
)
from cwm_agent.protocol.chat import ASSISTANT, TOOL_ROLE_PREFIX, USER, Message
from cwm_agent.protocol.parsing import parse_reply
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
from cwm_agent.tools import TOOL_NAMES, Toolbox
from cwm_agent.tools.result import readable

Observer = Callable[[MessageRecord], None]


class RolloutConfig(BaseModel):
    """Budgets of one rollout; the defaults are CWM's SWE-bench evaluation settings."""

    task: Literal["issue", "testgen"] = "issue"
    max_turns: int = Field(128, ge=1)
    context_size: int = Field(131_072, gt=0)
    max_reply_tokens: int = Field(65_536, gt=0)
    session_timeout: float = Field(120.0, gt=0, description="per bash call, in the prompt too")
    max_duration_s: float | None = Field(
        None, gt=0, description="wall-time cap, checked before each reply is generated"
    )
    repo_root: str = WORKDIR


def run_rollout(
    policy: Policy,
    toolbox: Toolbox,
    issue: str,
    config: RolloutConfig,
    observer: Observer | None = None,
    checkpoint: Callable[[Trajectory], None] | None = None,
) -> Trajectory:
    """Run one episode to its end; the trajectory says how it ended (never raises for
    model, tool or sandbox failures: they end the episode with status `error`).

    `checkpoint` gets the trajectory after every message, so an interrupted run
    keeps what it did; an interrupt marks it `interrupted` and goes on up."""
    started = time.monotonic()
    tokenizer = policy.tokenizer
    count_user = message_counter(tokenizer, USER)
    prompt = issue_prompt if config.task == "issue" else testgen_prompt
    environment = environment_prompt(
        int(config.session_timeout), config.context_size, config.max_turns
    )
    messages = [
        Message.system(system_prompt(environment)),
        Message.user(prompt(issue, config.repo_root, count_user)),
    ]
    trajectory = Trajectory(
        task=config.task,
        model=policy.name,
        config=config.model_dump(),
        issue=issue,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )

    def record(message: MessageRecord) -> None:
        trajectory.messages.append(message)
        if observer is not None:
            observer(message)
        if checkpoint is not None:
            checkpoint(trajectory)

    for message in messages:
        record(MessageRecord(role=message.role, content=message.content, turn=0))
    used = conversation_tokens(tokenizer, messages)
    reopen = generation_prompt_tokens(tokenizer)

    def add_context(message: Message, count: Callable[[str], int]) -> int:
        """Tokens a message and the next generation prompt add (CWM's observation size)."""
        return count(message.content) + reopen

    try:
        while True:
            if config.max_duration_s and time.monotonic() - started >= config.max_duration_s:
                trajectory.status = "time_limit"
                trajectory.reason = f"reached the wall-time cap of {config.max_duration_s:g}s"
                break
            room = min(config.max_reply_tokens, config.context_size - used)
            if room <= 0:
                trajectory.status = "context_exceeded"
                trajectory.reason = (
                    f"context size exceeded: {used} >= {config.context_size}, no room for a reply"
                )
                break
            generated = time.monotonic()
            completion = policy.complete([messages], room)[0]
            trajectory.generation_s += time.monotonic() - generated
            trajectory.turns += 1
            used += completion.completion_tokens
            reply = Message.assistant(completion.text, completion.stop, completion.token_ids)
            messages.append(reply)
            parsed = parse_reply(completion.text, TOOL_NAMES)
            final = trajectory.submission is not None and parsed.is_final_response
            record(
                MessageRecord(
                    role=ASSISTANT,
                    content=completion.text,
                    turn=trajectory.turns,
                    stop=completion.stop,
                    finish_reason=completion.finish_reason,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    tokens=completion.completion_tokens,
                    duration_s=completion.duration_s,
                    tool_call=(
                        ToolCallRecord(
                            name=parsed.tool_call.name, argument=parsed.tool_call.argument
                        )
                        if parsed.tool_call
                        else None
                    ),
                    format_error=parsed.error.feedback if parsed.error and not final else None,
                )
            )
            if used > config.context_size:
                trajectory.status = "context_exceeded"
                trajectory.reason = f"context size exceeded: {used} > {config.context_size}"
                break
            if trajectory.turns >= config.max_turns:
                trajectory.status = "max_turns"
                trajectory.reason = f"reached {config.max_turns} turns"
                break

            if parsed.tool_call is None:
                assert parsed.error is not None
                if final:
                    trajectory.status = "finished"
                    break
                feedback = truncate_tool_message(
                    parsed.error.feedback, count_user, MAX_TOOL_MESSAGE_TOKENS
                )
                answer = Message.user(feedback)
                tokens = add_context(answer, count_user)
                messages.append(answer)
                used += tokens
                record(
                    MessageRecord(role=USER, content=feedback, turn=trajectory.turns, tokens=tokens)
                )
                continue

            call = parsed.tool_call
            result = toolbox.run(call.name, call.argument)
            trajectory.tools_s += result.duration_s
            if result.submission is not None:
                trajectory.submission = readable(result.submission)
                trajectory.submission_bytes = result.submission.encode("utf-8", "surrogateescape")
            count_tool = message_counter(tokenizer, TOOL_ROLE_PREFIX + call.name)
            estimate = min(
                count_tool(tool_result_for_estimate(result.output)), MAX_TOOL_MESSAGE_TOKENS
            )
            body = truncate_tool_message(
                tool_result(
                    result.output,
                    remaining_turns=config.max_turns - trajectory.turns,
                    remaining_tokens=config.context_size - used - estimate,
                ),
                count_tool,
                MAX_TOOL_MESSAGE_TOKENS,
            )
            answer = Message.tool(call.name, body)
            tokens = add_context(answer, count_tool)
            messages.append(answer)
            used += tokens
            record(
                MessageRecord(
                    role=answer.role,
                    content=body,
                    turn=trajectory.turns,
                    tokens=tokens,
                    duration_s=result.duration_s,
                    tool_result=ToolResultRecord(
                        output=result.output,
                        ok=result.ok,
                        exit_code=result.exit_code,
                        duration_s=result.duration_s,
                    ),
                )
            )
    except PolicyError as exc:
        trajectory.status, trajectory.reason = "error", f"model: {exc}"
    except (SandboxError, DockerException, RequestException, OSError) as exc:
        # The container or the daemon went away: the rollout cannot go on.
        trajectory.status, trajectory.reason = "error", f"sandbox: {type(exc).__name__}: {exc}"
    except (KeyboardInterrupt, SandboxInterrupted) as exc:
        trajectory.status = "interrupted"
        trajectory.reason = f"interrupted ({exc or 'Ctrl-C'})"
        raise
    finally:
        trajectory.tokens_used = used
        trajectory.duration_s = time.monotonic() - started
        if checkpoint is not None:
            checkpoint(trajectory)
    return trajectory


__all__ = ["Observer", "RolloutConfig", "run_rollout"]
