"""The few GitHub REST calls the bot makes, over `requests`, with typed answers.

The token is sent only in the Authorization header of these requests; it is
never logged and never part of an error message.

GitHub has bad moments: 5xx answers, timeouts, and rate limits (429, or 403 with
`retry-after` or `x-ratelimit-remaining: 0`). A call is retried a bounded number
of times, waiting as long as the answer's `retry-after` / `x-ratelimit-reset`
asks (never longer than MAX_WAIT_S, else it gives up at once) or backing off
exponentially, then fails with one line. A POST that may have been acted on is
retried only where a repeat is harmless: creating the pull request (a repeat
finds the one its first attempt made), not posting a comment.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from typing import Any

import requests
from pydantic import BaseModel, Field
from urllib3.exceptions import NewConnectionError

from cwm_agent.ci.outcome import CIError

API_VERSION = "2022-11-28"
RETRIES = 4  # attempts after the first
BACKOFF_S = 1.0  # the first wait without a header to go by; doubled each time
MAX_WAIT_S = 60.0  # a longer wait asked for (a spent hourly quota) gives up instead
_TRANSIENT = frozenset({500, 502, 503, 504})
_SECONDARY_WAIT_S = 60.0  # GitHub's advice for a secondary rate limit that names no wait


class GitHubError(CIError):
    """An API call failed; the message is meant for users."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Again(Exception):
    """A failure worth another attempt; `wait_s` is what the answer asked for, if anything."""

    def __init__(self, reason: str, wait_s: float | None = None, acted: bool = True) -> None:
        super().__init__(reason)
        self.wait_s, self.acted = wait_s, acted


class Label(BaseModel):
    name: str


class User(BaseModel):
    login: str


class Issue(BaseModel):
    number: int
    title: str
    body: str | None = None
    state: str = "open"
    locked: bool = False
    labels: list[Label] = Field(default_factory=list)
    repository_url: str = ""
    pull_request: dict[str, Any] | None = None  # set when the "issue" is a pull request


class PullRequest(BaseModel):
    number: int
    html_url: str = ""


class _Source(BaseModel):
    issue: Issue | None = None


class _TimelineEvent(BaseModel):
    event: str | None = None
    source: _Source | None = None

    def open_pull(self, repository_url: str) -> int | None:
        """The open pull request of this repository that this event cross-references
        the issue from, if any (a pull request elsewhere has a number of its own)."""
        issue = self.source.issue if self.source else None
        if self.event != "cross-referenced" or issue is None or issue.pull_request is None:
            return None
        if issue.repository_url and issue.repository_url.rstrip("/") != repository_url:
            return None
        return issue.number if issue.state == "open" else None


class GitHub:
    """One repository's API (`slug` is owner/name)."""

    def __init__(
        self,
        api_url: str,
        slug: str,
        token: str | None,
        timeout: float = 30.0,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.base = api_url.rstrip("/")
        self.slug = slug
        self.timeout = timeout
        self.backoff_s = backoff_s
        self.http = requests.Session()
        self.http.headers.update(
            {
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "cwm-agent",
            }
        )
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, *, repeatable: bool = True, **kwargs: Any) -> Any:
        """One API call, retried through GitHub's bad moments; `repeatable=False` for a
        POST whose repeat would do it twice (retried only when it surely was not done)."""
        attempt = 0
        while True:
            try:
                return self._attempt(method, path, **kwargs)
            except _Again as again:
                last = attempt == RETRIES or (again.acted and not repeatable)
                wait = again.wait_s
                if wait is None:
                    wait = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                if last or wait > MAX_WAIT_S:
                    tried = f"{attempt + 1} attempt(s)"
                    later = f"{wait:.0f} s" if wait > MAX_WAIT_S else "a while"
                    raise GitHubError(
                        f"GitHub API {method} {path}: {again} ({tried}): try again in {later}; "
                        "a re-run finds the branch and pull request this one made"
                    ) from None
                time.sleep(wait)
                attempt += 1

    def _attempt(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base}/repos/{self.slug}{path}"
        try:
            response = self.http.request(method, url, timeout=self.timeout, **kwargs)
        except (requests.ConnectTimeout, requests.ReadTimeout) as exc:
            sent = isinstance(exc, requests.ReadTimeout)
            raise _Again(f"no answer within {self.timeout:g} s", acted=sent) from None
        except requests.ConnectionError as exc:
            if _reached(exc):  # the connection broke after the request went out
                raise _Again(f"the connection broke ({type(exc).__name__})") from None
            raise GitHubError(
                f"GitHub API {method} {path}: cannot reach {self.base} ({type(exc).__name__}): "
                "check --api-url"
            ) from None
        except requests.RequestException as exc:
            raise GitHubError(
                f"GitHub API {method} {path}: {type(exc).__name__}: check --api-url"
            ) from None
        if response.ok:
            return response.json() if response.content else None
        try:
            detail = str(response.json().get("message", ""))
        except (ValueError, AttributeError):
            detail = response.text[:200]
        reason = f"{response.status_code} {detail}".strip()
        limited = _rate_limit_wait(response)
        if limited is not None:
            raise _Again(f"rate limited ({reason})", limited, acted=False)
        if response.status_code in _TRANSIENT:
            raise _Again(reason, _retry_after(response.headers))
        hint = {401: "check the token", 403: "check the workflow's permissions:"}.get(
            response.status_code, "check --repo-slug and the issue number"
        )
        raise GitHubError(f"GitHub API {method} {path}: {reason}: {hint}", response.status_code)

    def issue(self, number: int) -> Issue:
        return Issue.model_validate(self._call("GET", f"/issues/{number}"))

    def default_branch(self) -> str:
        return str(self._call("GET", "")["default_branch"])

    def open_pull(self, branch: str) -> PullRequest | None:
        """The open pull request whose head is `branch` of this repository, if any."""
        owner = self.slug.split("/")[0]
        found = self._call("GET", "/pulls", params={"state": "open", "head": f"{owner}:{branch}"})
        return PullRequest.model_validate(found[0]) if found else None

    def linked_pulls(self, number: int) -> list[int]:
        """Open pull requests that reference the issue (its timeline's cross-references)."""
        events = self._call("GET", f"/issues/{number}/timeline", params={"per_page": 100})
        here = f"{self.base}/repos/{self.slug}"
        found = (_TimelineEvent.model_validate(raw).open_pull(here) for raw in events)
        return [number for number in found if number is not None]

    def create_pull(self, title: str, head: str, base: str, body: str) -> PullRequest:
        """Open the draft; where an attempt whose answer was lost already opened it
        (GitHub then refuses a second one for `head`), that one is updated instead."""
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": True}
        try:
            return PullRequest.model_validate(self._call("POST", "/pulls", json=payload))
        except GitHubError as exc:
            made = self.open_pull(head) if exc.status == 422 else None
            if made is None:
                raise
            return self.update_pull(made.number, title, body)

    def update_pull(self, number: int, title: str, body: str) -> PullRequest:
        payload = {"title": title, "body": body}
        return PullRequest.model_validate(self._call("PATCH", f"/pulls/{number}", json=payload))

    def comment(self, number: int, body: str) -> str:
        """Post a comment on the issue; returns its URL."""
        made = self._call(
            "POST", f"/issues/{number}/comments", repeatable=False, json={"body": body}
        )
        return str(made.get("html_url", ""))


def _rate_limit_wait(response: requests.Response) -> float | None:
    """Seconds to wait before a rate-limited call may be repeated; None if it was not
    rate limited (429, or a 403 that says so: a plain 403 is a missing permission)."""
    headers = response.headers
    if response.status_code == 403:
        spent = headers.get("x-ratelimit-remaining") == "0"
        if not spent and "retry-after" not in headers:
            return None
    elif response.status_code != 429:
        return None
    wait = _retry_after(headers)
    if wait is None and headers.get("x-ratelimit-remaining") == "0":
        try:
            wait = max(0.0, float(headers["x-ratelimit-reset"]) - time.time())
        except (KeyError, ValueError):
            wait = None
    return _SECONDARY_WAIT_S if wait is None else wait


def _reached(exc: requests.ConnectionError) -> bool:
    """Whether the request got to the server before its connection broke (a refused or
    unresolvable address is a wrong --api-url, not a bad moment)."""
    inner = exc.args[0] if exc.args else None
    return not isinstance(getattr(inner, "reason", inner), NewConnectionError)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after` in seconds (it may also be an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def run_url(env: Mapping[str, str]) -> str | None:
    """The Actions run page (where the trajectory artifact is listed), when in Actions."""
    parts = [env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return None
    server, slug, run = parts
    return f"the `cwm-agent` artifact of [this run]({server}/{slug}/actions/runs/{run})"
