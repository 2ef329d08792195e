"""`openai:URL,URL,...`: replies spread over several real servers, and failing over.

The servers are tests/helpers.py's: our completions server running a tiny
random CWM, with recording fronts (failures injected) before it.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from cwm_agent.model import ModelSpec, PolicyPool, SamplingConfig, load_policy
from cwm_agent.model.hf import TransformersPolicy
from cwm_agent.model.openai_api import OpenAIPolicy
from cwm_agent.model.policy import PolicyError
from cwm_agent.model.routing import EndpointRouter
from cwm_agent.model.server import CompletionServer
from cwm_agent.protocol.chat import STOP_TOKENS, render_ids, special_token_id
from tests import helpers
from tests.helpers import FAST, sample_conversations

GREEDY = SamplingConfig(temperature=0.0)

# The tiny model, its server, and the recording fronts.
local, server, front_factory = helpers.local, helpers.server, helpers.front_factory


def url(server: CompletionServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def completions(front: Any) -> int:
    return sum(path == "/v1/completions" for path, _ in front.posts)


def test_replies_go_to_the_endpoint_with_fewest_outstanding(
    server: CompletionServer, front_factory: Any
) -> None:
    fronts = [front_factory(url(server), delay_s=0.3) for _ in range(2)]
    router = EndpointRouter([f.url for f in fronts], sampling=GREEDY, **FAST)
    conversations = [sample_conversations()[2]] * 4
    replies = router.complete(conversations, 6)
    assert [completions(f) for f in fronts] == [2, 2]
    alone = OpenAIPolicy(url(server), sampling=GREEDY).complete(conversations[:1], 6)[0]
    assert [r.text for r in replies] == [alone.text] * 4
    assert router.outstanding == [0, 0]


def test_a_failing_endpoint_hands_its_requests_to_the_next(
    server: CompletionServer, front_factory: Any
) -> None:
    failing = front_factory(url(server), failures=(503,) * 8)
    healthy = front_factory(url(server))
    router = EndpointRouter([dead_url(), failing.url, healthy.url], sampling=GREEDY, **FAST)
    replies = router.complete(sample_conversations(), 4)
    assert len(replies) == 3 and all(r.completion_tokens > 0 for r in replies)
    assert completions(healthy) == 3  # every reply came from the healthy one
    assert completions(failing) > 0 and len(failing.failures) == 8 - completions(failing)


def test_every_endpoint_failing_is_one_line() -> None:
    first, second = dead_url(), dead_url()
    router = EndpointRouter([first, second], **FAST)
    with pytest.raises(PolicyError) as error:
        router.complete([sample_conversations()[2]], 4)
    message = str(error.value)
    assert message.startswith("all 2 endpoints failed; the last: http://127.0.0.1:")
    assert "\n" not in message and "Connection refused" in message


def test_the_model_spec_names_the_endpoints(server: CompletionServer) -> None:
    spec = f"openai:{url(server)},{url(server)}/v1"
    pool = PolicyPool(ModelSpec.parse(spec))
    assert isinstance(pool.shared, EndpointRouter)
    assert pool.name == f"openai:{url(server)},{url(server)}"
    with pytest.raises(PolicyError, match=r"expected URL,URL,\.\.\. with no empty entry"):
        load_policy(ModelSpec.parse(f"openai:{url(server)},"))


def test_token_id_prompts_are_routed_too(
    local: TransformersPolicy, server: CompletionServer, front_factory: Any
) -> None:
    """The trace path's `complete_ids`: same ids as one server, the dead endpoint skipped."""
    front = front_factory(url(server))
    router = EndpointRouter([dead_url(), front.url], sampling=GREEDY, **FAST)
    prompts = [render_ids(c, local.tokenizer) for c in sample_conversations()[1:]]
    stops = [special_token_id(local.tokenizer, token) for token in STOP_TOKENS]
    alone = OpenAIPolicy(url(server), sampling=GREEDY).complete_ids(prompts, 5, stops)
    assert router.complete_ids(prompts, 5, stops) == alone
    assert completions(front) == 2
