"""The rollout loop in a real sandbox, with a scripted policy standing in for CWM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import docker
import pytest
from transformers import PreTrainedTokenizerFast

from cwm_agent.agent import MessageRecord, RolloutConfig, Trajectory, run_rollout
from cwm_agent.model import Completion, PolicyError
from cwm_agent.model.tokens import message_counter
from cwm_agent.protocol.chat import EOT, Message, render_ids
from cwm_agent.protocol.prompts import tool_result_for_estimate
from cwm_agent.sandbox import Sandbox, SandboxConfig, SandboxInterrupted
from cwm_agent.tools import Toolbox

pytestmark = pytest.mark.docker


@dataclass
class ScriptedPolicy:
    """The model's double: scripted replies, counted with a real (tiny) tokenizer."""

    replies: list[tuple[str, str]]  # (text, finish reason)
    tokenizer: PreTrainedTokenizerFast | None = None
    name: str = "scripted"
    seen: list[int] = field(default_factory=list)

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: int
    ) -> list[Completion]:
        if not self.replies:
            raise PolicyError("script exhausted")
        text, reason = self.replies.pop(0)
        ids = self.tokenizer.encode(text, add_special_tokens=False) if self.tokenizer else []
        self.seen.append(len(conversations[0]))
        prompt = render_ids(conversations[0], self.tokenizer) if self.tokenizer else []
        return [
            Completion(
                text=text,
                prompt_tokens=len(prompt),
                completion_tokens=len(ids) + (1 if reason == "stop" else 0),
                finish_reason=reason,  # type: ignore[arg-type]
                stop=EOT if reason == "stop" else None,
                duration_s=0.0,
            )
        ]


def call(tool: str, argument: str) -> tuple[str, str]:
    return f"Thinking.\n</think>\n\n<tool: {tool}>\n{argument}\n</tool>", "stop"


@pytest.fixture(scope="module")
def box(client: docker.DockerClient, base_image: str) -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(image=base_image, workdir="/testbed"), client) as sandbox:
        assert sandbox.session is not None
        sandbox.session.run("git init -q && git commit -q --allow-empty -m start")
        yield sandbox


def rebuilt(trajectory: Trajectory) -> list[Message]:
    """The conversation as the model saw it, rebuilt from the trajectory."""
    return [
        Message.assistant(m.content, m.stop)
        if m.role == "assistant"
        else Message(m.role, m.content)
        for m in trajectory.messages
    ]


def test_token_accounting_is_exact_with_a_tokenizer(
    box: Sandbox, cwm_tokenizer: PreTrainedTokenizerFast
) -> None:
    box.session.run("cd /testbed && git checkout -q -- . && git clean -qfd")  # type: ignore[union-attr]
    policy = ScriptedPolicy(
        [
            call("bash", 'echo "hello <|eot_""id|>"'),
            call("bash", "printf 'a\\nb' > f.txt && git add -N f.txt && git diff > p.diff"),
            call("submit", "p.diff"),
            ("All done.\n</think>\n\n## Summary\n\nDone.", "stop"),
        ],
        tokenizer=cwm_tokenizer,
    )
    config = RolloutConfig(context_size=50_000, max_turns=10)
    trajectory = run_rollout(policy, Toolbox(box), "Make f.txt.", config)
    assert trajectory.status == "finished", trajectory.reason
    assert trajectory.submission is not None and trajectory.submission.startswith("diff --git")
    # Every token the model saw is counted once: the rebuilt conversation's ids.
    conversation = rebuilt(trajectory)
    assert trajectory.tokens_used == len(
        render_ids(conversation, cwm_tokenizer, add_generation_prompt=False)
    )
    # What a paid API bills: each reply's prompt and completion, per turn and in total.
    replies = [m for m in trajectory.messages if m.role == "assistant"]
    assert all(m.prompt_tokens and m.completion_tokens for m in replies)
    assert trajectory.prompt_tokens == sum(m.prompt_tokens or 0 for m in replies)
    assert trajectory.completion_tokens == sum(m.completion_tokens or 0 for m in replies)
    assert trajectory.prompt_tokens > trajectory.tokens_used > trajectory.completion_tokens
    # The first budget notice: context - tokens so far - the estimate of this message.
    first = next(m for m in trajectory.messages if m.tool_result is not None)
    before = len(render_ids(conversation[:3], cwm_tokenizer, add_generation_prompt=False))
    estimate = message_counter(cwm_tokenizer, "tool: bash")(
        tool_result_for_estimate(first.tool_result.output)  # type: ignore[union-attr]
    )
    assert first.tool_result.output == "hello <|eot_id|>\n"  # type: ignore[union-attr]
    assert first.content.endswith(
        f"* Remaining turns: 9\n* Remaining tokens: {50_000 - before - estimate}\n</budget>"
    )


def test_context_exhausted_ends_the_episode(box: Sandbox) -> None:
    policy = ScriptedPolicy([call("bash", "head -c 6000 /dev/zero | tr '\\0' x")] * 5)
    trajectory = run_rollout(
        policy, Toolbox(box), "Fill the context.", RolloutConfig(context_size=4000)
    )
    assert trajectory.status == "context_exceeded"
    assert trajectory.reason is not None and "exceeded" in trajectory.reason
    # Two tool results fill it: the third reply has no room left and is never asked for.
    assert trajectory.turns == 2
    assert len([m for m in trajectory.messages if m.tool_result is not None]) == 2
    assert trajectory.tokens_used >= 4000


def test_reply_cut_at_length_and_format_errors_go_back_as_user_messages(box: Sandbox) -> None:
    policy = ScriptedPolicy(
        [
            ("I keep thinking and never clo", "length"),
            ("Done thinking.\n</think>\n\nNo tool here.", "stop"),
            ("Two.\n</think>\n\n<tool: bash>\nls\n</tool>\n<tool: bash>\npwd\n</tool>", "stop"),
            ("Bad tool.\n</think>\n\n<tool: python>\nprint(1)\n</tool>", "stop"),
        ]
    )
    trajectory = run_rollout(policy, Toolbox(box), "Anything.", RolloutConfig())
    feedback = [m.content for m in trajectory.messages if m.role == "user"][1:]
    assert feedback == [
        "FormatError: Expected exactly one thinking end token, got 0",
        "FormatError: No tool calls found",
        "FormatError: Expected one tool call, but found 2: bash, bash. "
        "Ensure only one <tool:...></tool> block is present in the response.",
        "NoSuchToolError: Tool 'python' not found.",
    ]
    assert trajectory.messages[2].stop is None and trajectory.messages[2].finish_reason == "length"
    assert trajectory.status == "error" and trajectory.reason == "model: script exhausted"
    assert policy.seen == [2, 4, 6, 8]  # each reply saw the whole conversation so far


def test_max_turns_counts_the_reply_before_running_it(box: Sandbox) -> None:
    policy = ScriptedPolicy([call("bash", f"echo {i}") for i in range(5)])
    trajectory = run_rollout(policy, Toolbox(box), "Count.", RolloutConfig(max_turns=3))
    assert trajectory.status == "max_turns" and trajectory.turns == 3
    outputs = [m.tool_result.output for m in trajectory.messages if m.tool_result]
    assert outputs == ["0\n", "1\n"]
    assert trajectory.duration_s >= trajectory.tools_s > 0


def test_non_utf8_files_keep_their_bytes_through_the_loop(box: Sandbox) -> None:
    box.session.run("cd /testbed && printf 'caf\\xe9\\nold\\n' > latin1.txt")  # type: ignore[union-attr]
    edit = "latin1.txt\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE"
    policy = ScriptedPolicy(
        [
            call("edit", edit),
            call("bash", "git add -N latin1.txt && git diff latin1.txt > latin1.diff"),
            call("submit", "latin1.diff"),
            ("Done.\n</think>\n\n## Summary\n\nEdited.", "stop"),
        ]
    )
    trajectory = run_rollout(policy, Toolbox(box), "Edit.", RolloutConfig())
    assert trajectory.status == "finished", trajectory.reason
    assert b"+caf\xe9\n" in (trajectory.submission_bytes or b"")
    assert "caf\ufffd" in (trajectory.submission or "")
    assert "caf\ufffd" in trajectory.model_dump_json()  # the record stays valid JSON


def test_losing_the_container_ends_the_rollout_with_an_error(
    client: docker.DockerClient, base_image: str
) -> None:
    with Sandbox(SandboxConfig(image=base_image), client) as sandbox:

        class LosesItsSandbox(ScriptedPolicy):
            """Before its second reply, the container disappears (as when the daemon restarts)."""

            def complete(
                self, conversations: Sequence[Sequence[Message]], max_new_tokens: int
            ) -> list[Completion]:
                if len(self.replies) == 1:
                    client.containers.get(sandbox.id).remove(force=True)
                return super().complete(conversations, max_new_tokens)

        policy = LosesItsSandbox([call("bash", "echo hi"), call("bash", "pwd")])
        trajectory = run_rollout(policy, Toolbox(sandbox), "Break it.", RolloutConfig())
    assert trajectory.status == "error"
    assert trajectory.reason is not None and trajectory.reason.startswith("sandbox: ")
    assert [m.tool_result.output for m in trajectory.messages if m.tool_result] == ["hi\n"]


def test_wall_time_cap_ends_before_the_next_reply(box: Sandbox) -> None:
    policy = ScriptedPolicy([call("bash", "sleep 0.4"), call("bash", "echo never")])
    config = RolloutConfig(max_duration_s=0.3)
    trajectory = run_rollout(policy, Toolbox(box), "Take time.", config)
    assert trajectory.status == "time_limit"
    assert trajectory.reason == "reached the wall-time cap of 0.3s"
    assert trajectory.turns == 1 and len(policy.replies) == 1


def test_a_reply_past_the_context_size_is_recorded_but_not_run(
    box: Sandbox, cwm_tokenizer: PreTrainedTokenizerFast
) -> None:
    reply = call("bash", "echo " + "word " * 3000)
    policy = ScriptedPolicy([reply], tokenizer=cwm_tokenizer)
    trajectory = run_rollout(policy, Toolbox(box), "Talk.", RolloutConfig(context_size=3000))
    assert trajectory.status == "context_exceeded" and trajectory.turns == 1
    assert trajectory.reason == f"context size exceeded: {trajectory.tokens_used} > 3000"
    last = trajectory.messages[-1]
    assert last.role == "assistant" and last.tool_call is not None
    assert all(m.tool_result is None for m in trajectory.messages)


@pytest.mark.parametrize(
    ("interrupt", "reason"),
    [
        (KeyboardInterrupt(), "interrupted (Ctrl-C)"),
        (SandboxInterrupted("SIGTERM"), "interrupted (SIGTERM)"),
    ],
)
def test_an_interrupt_is_checkpointed_and_goes_on_up(
    box: Sandbox, interrupt: BaseException, reason: str
) -> None:
    class Interrupted(ScriptedPolicy):
        def complete(
            self, conversations: Sequence[Sequence[Message]], max_new_tokens: int
        ) -> list[Completion]:
            if not self.replies:
                raise interrupt
            return super().complete(conversations, max_new_tokens)

    seen: list[MessageRecord] = []
    saved: list[tuple[str, str | None, int]] = []
    with pytest.raises(type(interrupt)):
        run_rollout(
            Interrupted([call("bash", "echo one")]),
            Toolbox(box),
            "Stop me.",
            RolloutConfig(),
            seen.append,
            lambda t: saved.append((t.status, t.reason, len(t.messages))),
        )
    assert [m.role for m in seen] == ["system", "user", "assistant", "tool: bash"]
    assert saved[:4] == [("running", None, n) for n in range(1, 5)]
    assert saved[4:] == [("interrupted", reason, 4)]
