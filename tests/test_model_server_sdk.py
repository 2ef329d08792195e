"""`cwm-agent serve` as OpenAI clients use it, with the official `openai` SDK as the client
(issue 24): completions and chat, whole and streamed (SSE), `n` choices as one batch,
and the API key. Replies are checked against the transformers backend on the same tiny
random CWM: greedy, or seeded where sampling matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from cwm_agent.model.hf import Generated, TransformersPolicy
from cwm_agent.model.openai_api import prompt_text
from cwm_agent.model.server import CompletionServer, serve
from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol.chat import Message, render_ids
from tests import helpers

local, server = helpers.local, helpers.server

GREEDY = SamplingConfig(greedy=True)
CONVERSATION = helpers.sample_conversations()[1]  # system, user, assistant, tool: bash


def openai_messages(conversation: list[Message]) -> list[dict[str, Any]]:
    """The conversation as an OpenAI client writes it (a tool result names its tool)."""
    return [
        {"role": "tool", "name": m.tool_name, "content": m.content}
        if m.tool_name
        else {"role": m.role, "content": m.content}
        for m in conversation
    ]


@pytest.fixture(scope="module")
def client(server: CompletionServer) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def generate(
    local: TransformersPolicy, n: int, max_tokens: int, sampling: SamplingConfig
) -> list[Generated]:
    """What the transformers backend replies to CONVERSATION, n rows in one batch."""
    ids = render_ids(CONVERSATION, local.tokenizer)
    return local.generate_ids([ids] * n, max_tokens, sampling)


def joined(chunks: list[Any], index: int, field: str) -> str:
    """The text of choice `index` across a stream's chunks."""
    pieces = [getattr(c, field) for chunk in chunks for c in chunk.choices if c.index == index]
    if field == "delta":
        pieces = [delta.content or "" for delta in pieces]
    return "".join(pieces)


def test_completions_whole_and_streamed(
    client: OpenAI, server: CompletionServer, local: TransformersPolicy
) -> None:
    [expected] = generate(local, 1, 24, GREEDY)
    asked = {"model": server.model_name, "prompt": prompt_text(CONVERSATION), "max_tokens": 24}
    whole = client.completions.create(**asked, temperature=0)
    assert whole.choices[0].text == expected.text
    assert whole.choices[0].finish_reason == expected.finish_reason
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == expected.prompt_tokens

    stream = client.completions.create(
        **asked, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert joined(chunks, 0, "text") == expected.text
    assert sum(bool(c.choices and c.choices[0].text) for c in chunks) > 1  # as it is generated
    ends = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert ends == [expected.finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage


def test_chat_is_rendered_in_cwms_own_format(
    client: OpenAI, server: CompletionServer, local: TransformersPolicy
) -> None:
    [expected] = generate(local, 1, 24, GREEDY)
    messages: Any = openai_messages(CONVERSATION)
    whole = client.chat.completions.create(
        model=server.model_name, messages=messages, max_tokens=24, temperature=0
    )
    [choice] = whole.choices
    assert (choice.message.role, choice.message.content) == ("assistant", expected.text)
    assert choice.finish_reason == expected.finish_reason
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == len(render_ids(CONVERSATION, local.tokenizer))

    chunks = list(
        client.chat.completions.create(
            model=server.model_name,
            messages=messages,
            max_completion_tokens=24,
            temperature=0,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert joined(chunks, 0, "delta") == expected.text


def test_n_choices_are_sampled_as_one_batch(
    client: OpenAI, server: CompletionServer, local: TransformersPolicy
) -> None:
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=0)
    # A seed whose two rows differ: equal choices could come from one row sampled twice.
    seed = next(
        s
        for s in range(50)
        if len({g.text for g in generate(local, 2, 12, sampling.model_copy(update={"seed": s}))})
        == 2
    )
    expected = generate(local, 2, 12, sampling.model_copy(update={"seed": seed}))
    whole = client.completions.create(
        model=server.model_name,
        prompt=prompt_text(CONVERSATION),
        max_tokens=12,
        n=2,
        seed=seed,
        temperature=1.0,
    )
    assert [c.text for c in whole.choices] == [g.text for g in expected]
    assert [c.index for c in whole.choices] == [0, 1]
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == expected[0].prompt_tokens  # counted once
    assert whole.usage.completion_tokens == sum(
        len(g.token_ids) + (g.stop is not None) for g in expected
    )

    chunks = list(
        client.chat.completions.create(
            model=server.model_name,
            messages=openai_messages(CONVERSATION),  # type: ignore[arg-type]
            max_tokens=12,
            n=2,
            seed=seed,
            temperature=1.0,
            stream=True,
        )
    )
    assert [joined(chunks, i, "delta") for i in (0, 1)] == [g.text for g in expected]


def test_refusals_reach_the_client_as_openai_errors(
    client: OpenAI, server: CompletionServer
) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match="the model 'gpt-4' does not exist"):
        client.chat.completions.create(model="gpt-4", messages=messages)
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(openai.BadRequestError, match="tools is not supported"):
        client.chat.completions.create(model=server.model_name, messages=messages, tools=tools)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(
            model=server.model_name, prompt="hi", max_tokens=10**6, stream=True
        )


@pytest.fixture
def keyed(local: TransformersPolicy) -> Iterator[CompletionServer]:
    server, thread = serve(local, api_key="s3cret")
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_the_api_key_is_the_sdks(keyed: CompletionServer) -> None:
    def client(key: str) -> OpenAI:
        return OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0, timeout=60)

    assert [m.id for m in client("s3cret").models.list()] == [keyed.model_name]
    with pytest.raises(openai.AuthenticationError, match="a valid API key is required"):
        client("wrong").completions.create(model=keyed.model_name, prompt="hi", max_tokens=1)
