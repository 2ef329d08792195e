"""The `openai:URL` backend against our completions server running a tiny random CWM.

With greedy decoding, the server answering a raw text prompt must reply exactly as
the transformers backend does for `render_ids`: that proves the text path gives CWM
the same tokens. A second server of the test's own (failures injected in front of
the real one) checks retries and error reporting. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests

from cwm_agent.model.hf import Generated, TransformersPolicy
from cwm_agent.model.openai_api import OpenAIPolicy, base_url, prompt_text
from cwm_agent.model.policy import PolicyError
from cwm_agent.model.server import CompletionServer
from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol.chat import EOM, EOT, Message, render_ids, render_text
from tests import helpers
from tests.helpers import FAST, sample_conversations

# The tiny model, its server, and the recording fronts.
local, server, front_factory = helpers.local, helpers.server, helpers.front_factory

GREEDY = SamplingConfig(greedy=True)


def _local_greedy(
    local: TransformersPolicy, conversation: list[Message], max_new_tokens: int
) -> Generated:
    ids = render_ids(conversation, local.tokenizer)
    return local.generate_ids([ids], max_new_tokens, GREEDY)[0]


def test_server_tokenises_the_rendered_text_as_render_ids(local: TransformersPolicy) -> None:
    tokenizer = local.tokenizer
    for conversation in sample_conversations():
        text = prompt_text(conversation)
        assert text == render_text(conversation)
        server_ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=False)
        assert server_ids == render_ids(conversation, tokenizer)


def test_greedy_replies_over_http_equal_the_transformers_backend(
    server: CompletionServer, local: TransformersPolicy
) -> None:
    conversations = sample_conversations()
    policy = OpenAIPolicy(server.url + "/v1/", sampling=GREEDY, retries=0)
    completions = policy.complete(conversations, 24)
    assert policy.model == local.name  # discovered from /v1/models
    assert len({c.prompt_tokens for c in completions}) == 3
    for conversation, completion in zip(conversations, completions, strict=True):
        expected = _local_greedy(local, conversation, 24)
        assert completion.text == expected.text
        assert completion.finish_reason == expected.finish_reason
        assert completion.stop == expected.stop
        assert completion.prompt_tokens == expected.prompt_tokens
        assert completion.prompt_tokens == len(render_ids(conversation, local.tokenizer))
        assert completion.completion_tokens == len(expected.token_ids) + (expected.stop is not None)
        assert completion.token_ids is None
        assert completion.duration_s > 0


def test_seeded_samples_over_http_equal_the_transformers_backend(
    server: CompletionServer, local: TransformersPolicy
) -> None:
    conversation = sample_conversations()[2]
    ids = render_ids(conversation, local.tokenizer)
    # A seed whose sample ends at a stop token (the random model rarely emits one).
    seed = next(
        s for s in range(200) if local.generate_ids([ids], 64, SamplingConfig(seed=s))[0].stop
    )
    expected = local.generate_ids([ids], 64, SamplingConfig(seed=seed))[0]
    [completion] = OpenAIPolicy(server.url, sampling=SamplingConfig(seed=seed)).complete(
        [conversation], 64
    )
    assert (completion.text, completion.finish_reason, completion.stop) == (
        expected.text,
        "stop",
        expected.stop,
    )
    assert completion.completion_tokens == len(expected.token_ids) + 1


def test_a_small_max_tokens_ends_with_length(
    server: CompletionServer, local: TransformersPolicy
) -> None:
    conversation = sample_conversations()[0]
    assert _local_greedy(local, conversation, 2).finish_reason == "length"
    [completion] = OpenAIPolicy(server.url, sampling=GREEDY).complete([conversation], 2)
    assert (completion.finish_reason, completion.stop, completion.completion_tokens) == (
        "length",
        None,
        2,
    )


def test_text_spelling_a_special_token_stays_text(
    server: CompletionServer, local: TransformersPolicy
) -> None:
    conversation = [Message.user("The README says: end with <|eot_id|> or <|eom_id|>.")]
    text = prompt_text(conversation)
    assert "<|eot_id|> or" not in text
    eot = local.tokenizer.convert_tokens_to_ids(EOT)
    ids = local.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=False)
    assert ids.count(eot) == render_ids(conversation, local.tokenizer).count(eot) == 1
    [completion] = OpenAIPolicy(server.url, sampling=GREEDY).complete([conversation], 2)
    assert completion.prompt_tokens == len(ids)


def test_each_request_gets_its_own_seed(server: CompletionServer, front_factory: Any) -> None:
    front = front_factory(server.url)
    conversation = sample_conversations()[2]
    policy = OpenAIPolicy(front.url, model=server.policy.name, sampling=SamplingConfig(seed=7))
    first = policy.complete([conversation] * 3, 4)
    policy.complete([conversation], 4)
    bodies = [body for path, body in front.posts if path == "/v1/completions"]
    assert sorted(body["seed"] for body in bodies) == [7, 8, 9, 10]
    assert bodies[0]["stop"] == ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]
    assert bodies[0]["skip_special_tokens"] is False
    replayed = OpenAIPolicy(
        front.url, model=server.policy.name, sampling=SamplingConfig(seed=7)
    ).complete([conversation] * 3, 4)
    assert [c.text for c in replayed] == [c.text for c in first]


def test_server_errors_and_429_are_retried(
    server: CompletionServer, local: TransformersPolicy, front_factory: Any
) -> None:
    front = front_factory(server.url, failures=(503, 429))
    conversation = sample_conversations()[2]
    policy = OpenAIPolicy(front.url, sampling=GREEDY, retries=2, **FAST)
    [completion] = policy.complete([conversation], 6)
    assert [path for path, _ in front.posts] == ["/v1/completions"] * 3
    assert completion.text == _local_greedy(local, conversation, 6).text


def test_a_client_error_fails_at_once_in_one_line(
    server: CompletionServer, front_factory: Any
) -> None:
    front = front_factory(server.url, failures=(400,))
    policy = OpenAIPolicy(front.url, model=server.policy.name, retries=3, **FAST)
    with pytest.raises(PolicyError) as error:
        policy.complete([sample_conversations()[2]], 4)
    assert str(error.value) == f"{front.url}/v1/completions: HTTP 400: injected 400"
    assert len(front.posts) == 1


def test_the_servers_own_refusals_reach_the_user(server: CompletionServer) -> None:
    conversation = [sample_conversations()[2]]
    with pytest.raises(PolicyError, match=r"HTTP 404: the model 'nope' does not exist"):
        OpenAIPolicy(server.url, model="nope").complete(conversation, 4)
    with pytest.raises(PolicyError, match=r"HTTP 400: max_tokens must be >= 1"):
        OpenAIPolicy(server.url).complete(conversation, 0)


def test_an_unreachable_server_fails_after_the_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = OpenAIPolicy(f"http://127.0.0.1:{port}", retries=2, **FAST)
    with pytest.raises(PolicyError) as error:
        policy.complete([sample_conversations()[2]], 4)
    assert str(error.value) == (
        f"http://127.0.0.1:{port}/v1/models: no answer after 3 attempts: "
        "cannot connect: Connection refused"
    )


def test_a_slow_server_times_out_after_the_retries(front_factory: Any) -> None:
    front = front_factory(None, delay_s=0.6, canned={"/v1/completions": {}})
    policy = OpenAIPolicy(front.url, model="m", timeout_s=0.2, retries=1, **FAST)
    with pytest.raises(PolicyError, match=r"no answer after 2 attempts: timed out after 0.2 s"):
        policy.complete([sample_conversations()[2]], 4)
    assert len(front.posts) == 2


def test_stop_tokens_are_named_from_vllm_stop_reasons(front_factory: Any) -> None:
    def reply(text: str, stop_reason: object) -> dict[str, Any]:
        choice = {"text": text, "finish_reason": "stop", "stop_reason": stop_reason}
        return {"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}

    conversation = [Message.user("hi")]
    cases = [(reply("ok", 8), "ok", EOM), (reply("ok", None), "ok", EOT)]
    cases.append((reply("ok<|eom_id|>", "<|eom_id|>"), "ok", EOM))
    tokenize = {"tokens": [9, 8, 1]}  # ids of <|eot_id|>, <|eom_id|>, <|end_of_text|>
    for canned, text, stop in cases:
        front = front_factory(None, canned={"/v1/completions": canned, "/tokenize": tokenize})
        [completion] = OpenAIPolicy(front.url, model="m").complete([conversation], 4)
        assert (completion.text, completion.stop, completion.completion_tokens) == (text, stop, 2)


def test_the_server_refuses_bad_requests_openai_style(server: CompletionServer) -> None:
    url = server.url + "/v1/completions"
    bad_json = requests.post(url, data=b"{", timeout=10)
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["message"].startswith("the body is not JSON")
    for body, param in [
        ({"prompt": "hi", "logprobs": 2}, "logprobs"),
        ({"prompt": "hi", "stop": ["\n"]}, "stop"),
        ({"prompt": "hi", "stop": [{}]}, "stop"),
        ({"prompt": "hi", "max_tokens": 10**6}, "max_tokens"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "n": 0}, "n"),
        ({"prompt": ""}, "prompt"),
    ]:
        answer = requests.post(url, json=body, timeout=10)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["param"] == param
    assert requests.get(server.url + "/nowhere", timeout=10).status_code == 404
    models = requests.get(server.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [server.policy.name]


def test_urls_name_the_server_root() -> None:
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", " http://h:8000/v1/ "):
        assert base_url(url) == "http://h:8000"
    with pytest.raises(PolicyError, match="expected a URL"):
        base_url("h:8000")
