"""Whether an event asks the bot to act, and whether the issue may be worked on.

Pure functions over the event payload and the fetched issue, so the whole
trigger/permission matrix is tested without a network or a container.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from cwm_agent.ci.github import Issue, Label, User
from cwm_agent.ci.outcome import ExitCode, Stop

TRUSTED = ("OWNER", "MEMBER", "COLLABORATOR")


class TriggerRules(BaseModel):
    """What counts as a request to fix an issue, and from whom."""

    label: str = "cwm-agent"
    command: str = "/cwm-agent fix"
    allowed: tuple[str, ...] = TRUSTED


class Comment(BaseModel):
    body: str = ""
    author_association: str = "NONE"
    user: User | None = None


class Repository(BaseModel):
    full_name: str
    default_branch: str | None = None


class Event(BaseModel):
    """The parts of a GitHub `issues` / `issue_comment` payload the bot reads."""

    action: str | None = None
    issue: Issue | None = None
    comment: Comment | None = None
    label: Label | None = None
    repository: Repository | None = None
    sender: User | None = None


class Trigger(BaseModel):
    """A request to fix one issue, and how it came."""

    slug: str
    issue: int
    base: str | None = None
    label: str | None = Field(None, description="set when a label triggered: it must still be on")
    why: str


def decide(event_name: str, event: Event, rules: TriggerRules) -> Trigger:
    """The trigger in `event`, or `Stop` with the reason it is not one."""
    if event.issue is None or event.repository is None:
        raise Stop(ExitCode.NOT_A_TRIGGER, f"skipped: a {event_name!r} event names no issue")
    sender = event.sender.login if event.sender else "someone"
    common = {
        "slug": event.repository.full_name,
        "issue": event.issue.number,
        "base": event.repository.default_branch,
    }
    if event_name == "issues":
        if event.action != "labeled" or event.label is None:
            raise Stop(
                ExitCode.NOT_A_TRIGGER, f"skipped: issue {event.action or 'event'}, not labeled"
            )
        if event.label.name != rules.label:
            raise Stop(
                ExitCode.NOT_A_TRIGGER,
                f"skipped: label {event.label.name!r} is not the trigger label {rules.label!r}",
            )
        # Labelling needs triage rights on the repository: the label is the permission.
        return Trigger(**common, label=rules.label, why=f"label {rules.label!r} added by {sender}")
    if event_name == "issue_comment":
        comment = event.comment
        if event.action != "created" or comment is None:
            raise Stop(ExitCode.NOT_A_TRIGGER, "skipped: only new comments can trigger a run")
        if not has_command(comment.body, rules.command):
            raise Stop(
                ExitCode.NOT_A_TRIGGER, f"skipped: the comment has no {rules.command!r} line"
            )
        if event.issue.pull_request is not None:
            raise Stop(
                ExitCode.NOT_A_TRIGGER, "skipped: the comment is on a pull request, not an issue"
            )
        who = comment.user.login if comment.user else sender
        if comment.author_association not in rules.allowed:
            raise Stop(
                ExitCode.NOT_ALLOWED,
                f"refused: {who} is {comment.author_association}; only "
                f"{', '.join(rules.allowed)} may ask for a fix",
            )
        return Trigger(**common, why=f"{rules.command!r} from {who} ({comment.author_association})")
    raise Stop(
        ExitCode.NOT_A_TRIGGER,
        f"skipped: {event_name!r} events do not trigger runs (issues, issue_comment do)",
    )


def has_command(body: str, command: str) -> bool:
    """True when a line of `body` starts with `command` as a whole word."""
    pattern = rf"^[ \t]*{re.escape(command)}(?![\w-])"
    return re.search(pattern, body, flags=re.MULTILINE) is not None


def check_issue(issue: Issue, trigger: Trigger) -> None:
    """Refuse issues that must not be worked on, whatever triggered the run."""
    if issue.pull_request is not None:
        raise Stop(ExitCode.CLOSED, f"skipped: #{issue.number} is a pull request, not an issue")
    if issue.state != "open":
        raise Stop(ExitCode.CLOSED, f"skipped: issue #{issue.number} is {issue.state}")
    if issue.locked:
        raise Stop(ExitCode.LOCKED, f"skipped: issue #{issue.number} is locked")
    if trigger.label and trigger.label not in {label.name for label in issue.labels}:
        raise Stop(
            ExitCode.NOT_A_TRIGGER,
            f"skipped: the label {trigger.label!r} was removed from #{issue.number} "
            "before the run started",
        )
