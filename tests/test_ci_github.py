"""The bot's GitHub client in GitHub's bad moments: 5xx answers, timeouts and rate
limits from a stand-in API on loopback (tests/github_api.py) that fails the first
calls. Retries are bounded, waits follow the answer's headers, and what is left
is one line."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from cwm_agent.ci.github import RETRIES, GitHub, GitHubError
from tests.github_api import Failure, FakeGitHub, serve

TOKEN = "ghs_testtoken0123456789abcdef"


@pytest.fixture
def api() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(slug="acme/calc", token=TOKEN)
    fake.add_issue(7, "median", "wrong")
    with serve(fake):
        yield fake


def client(api: FakeGitHub, timeout: float = 30.0) -> GitHub:
    return GitHub(api.url, api.slug, TOKEN, timeout=timeout, backoff_s=0.01)


def gaps(api: FakeGitHub) -> list[float]:
    """Seconds between the calls the stand-in received."""
    times = [r.at for r in api.requests]
    return [b - a for a, b in itertools.pairwise(times)]


def test_server_errors_are_retried_until_an_answer(api: FakeGitHub) -> None:
    api.failures = [Failure(500), Failure(502), Failure(503), Failure(504)]
    assert client(api).issue(7).title == "median"
    assert api.calls() == [("GET", "/repos/acme/calc/issues/7")] * 5


def test_retry_after_is_honoured(api: FakeGitHub) -> None:
    api.failures = [Failure(429, {"Retry-After": "1"}), Failure(503, {"Retry-After": "1"})]
    assert client(api).default_branch() == "main"
    assert len(api.requests) == 3 and min(gaps(api)) >= 1.0


def test_a_spent_quota_waits_for_its_reset(api: FakeGitHub) -> None:
    reset = str(int(time.time()) + 2)
    spent = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
    api.failures = [Failure(403, spent)]
    assert client(api).issue(7).number == 7
    assert len(api.requests) == 2 and api.requests[1].at - api.requests[0].at >= 1.0
    assert time.time() >= int(reset)


def test_a_secondary_rate_limit_waits_as_told(api: FakeGitHub) -> None:
    api.failures = [Failure(403, {"retry-after": "1"})]
    assert client(api).issue(7).number == 7
    assert gaps(api)[0] >= 1.0


def test_a_plain_403_is_a_permission_and_not_retried(api: FakeGitHub) -> None:
    api.failures = [Failure(403)]
    with pytest.raises(GitHubError) as failed:
        client(api).issue(7)
    assert str(failed.value) == (
        "GitHub API GET /issues/7: 403 failed: check the workflow's permissions:"
    )
    assert len(api.requests) == 1


def test_a_timeout_is_retried(api: FakeGitHub) -> None:
    api.failures = [Failure(200, delay_s=1.0)]
    assert client(api, timeout=0.3).issue(7).number == 7
    assert len(api.requests) == 2


def test_retries_are_bounded_then_one_line(api: FakeGitHub) -> None:
    api.failures = [Failure(502) for _ in range(RETRIES + 3)]
    with pytest.raises(GitHubError) as failed:
        client(api).issue(7)
    assert len(api.requests) == RETRIES + 1
    assert str(failed.value) == (
        f"GitHub API GET /issues/7: 502 failed ({RETRIES + 1} attempt(s)): try again in a "
        "while; a re-run finds the branch and pull request this one made"
    )


def test_a_reset_too_far_away_gives_up_at_once_saying_when(api: FakeGitHub) -> None:
    reset = str(int(time.time()) + 3600)
    api.failures = [Failure(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset})]
    with pytest.raises(GitHubError) as failed:
        client(api).issue(7)
    message = str(failed.value)
    assert message.startswith("GitHub API GET /issues/7: rate limited (403 failed) (1 attempt(s))")
    assert "try again in 3" in message and "\n" not in message
    assert len(api.requests) == 1


def test_a_pull_request_whose_answer_was_lost_is_not_opened_twice(api: FakeGitHub) -> None:
    """GitHub opened it, the answer was a 502: the retry finds it and updates it."""
    api.failures = [Failure(502, acted=True)]
    made = client(api).create_pull("Fix #7", "cwm-agent/issue-7", "main", "body")
    assert made.number == 100 and len(api.pulls) == 1
    assert api.calls() == [
        ("POST", "/repos/acme/calc/pulls"),
        ("POST", "/repos/acme/calc/pulls"),
        ("GET", "/repos/acme/calc/pulls?head=acme:cwm-agent/issue-7&state=open"),
        ("PATCH", "/repos/acme/calc/pulls/100"),
    ]


def test_a_comment_that_may_have_been_posted_is_not_posted_again(api: FakeGitHub) -> None:
    api.failures = [Failure(502, acted=True)]
    with pytest.raises(GitHubError):
        client(api).comment(7, "tried")
    assert len(api.comments) == 1 and len(api.requests) == 1
    api.failures = [Failure(429, {"retry-after": "0"})]  # refused, so surely not posted
    client(api).comment(7, "tried again")
    assert [c["body"] for c in api.comments] == ["tried", "tried again"]
