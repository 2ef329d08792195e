"""The few GitHub REST calls the bot makes, over `requests`, with typed answers.

The token is sent only in the Authorization header of these requests; it is
never logged and never part of an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
from pydantic import BaseModel, Field

from cwm_agent.ci.outcome import CIError

API_VERSION = "2022-11-28"


class GitHubError(CIError):
    """An API call failed; the message is meant for users."""


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

    def __init__(self, api_url: str, slug: str, token: str | None, timeout: float = 30.0) -> None:
        self.base = api_url.rstrip("/")
        self.slug = slug
        self.timeout = timeout
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

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base}/repos/{self.slug}{path}"
        try:
            response = self.http.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise GitHubError(
                f"GitHub API {method} {path}: cannot reach {self.base} ({type(exc).__name__}): "
                "check --api-url"
            ) from None
        if not response.ok:
            try:
                detail = str(response.json().get("message", ""))
            except ValueError:
                detail = response.text[:200]
            hint = {401: "check the token", 403: "check the workflow's permissions:"}.get(
                response.status_code, "check --repo-slug and the issue number"
            )
            reason = f"{response.status_code} {detail}".strip()
            raise GitHubError(f"GitHub API {method} {path}: {reason}: {hint}")
        return response.json() if response.content else None

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
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": True}
        return PullRequest.model_validate(self._call("POST", "/pulls", json=payload))

    def update_pull(self, number: int, title: str, body: str) -> PullRequest:
        payload = {"title": title, "body": body}
        return PullRequest.model_validate(self._call("PATCH", f"/pulls/{number}", json=payload))

    def comment(self, number: int, body: str) -> str:
        """Post a comment on the issue; returns its URL."""
        made = self._call("POST", f"/issues/{number}/comments", json={"body": body})
        return str(made.get("html_url", ""))


def run_url(env: Mapping[str, str]) -> str | None:
    """The Actions run page (where the trajectory artifact is listed), when in Actions."""
    parts = [env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return None
    server, slug, run = parts
    return f"the `cwm-agent` artifact of [this run]({server}/{slug}/actions/runs/{run})"
