"""One CI run: decide, fetch the issue, fix, judge the patch, then publish.

Publishing is a draft pull request from `cwm-agent/issue-N` (created, or on a
re-run updated: the branch is force-pushed and the body replaced), or a comment
on the issue saying what was tried. `dry_run` prints instead of writing;
`output_only` writes only the output folder, for any CI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import git
from pydantic import BaseModel, Field, SecretStr

from cwm_agent import gitrepo, view
from cwm_agent.agent import RolloutConfig
from cwm_agent.atomic_write import write_json
from cwm_agent.ci import guards, report
from cwm_agent.ci.event import Event, Trigger, TriggerRules, check_issue, decide
from cwm_agent.ci.github import GitHub, Issue, PullRequest
from cwm_agent.ci.guards import Limits
from cwm_agent.ci.outcome import CIError, ExitCode, Stop
from cwm_agent.ci.push import push_commit
from cwm_agent.ci.verify import TestEvidence, run_tests
from cwm_agent.errors import first_line
from cwm_agent.fix import FixOptions, FixResult, FixRun, commit_message, run_fix
from cwm_agent.model import DEFAULT_MODEL, ModelSpec
from cwm_agent.sandbox import WORKDIR
from cwm_agent.sandbox.image import DEFAULT_IMAGE
from cwm_agent.tts import TTSOptions

BRANCH_PREFIX = "cwm-agent/issue-"
REDACTED = b"[token removed]"  # what stands for the token in the artifact


class CISettings(BaseModel):
    """Everything `cwm-agent ci` was asked to do."""

    repo: Path = Path(".")
    event_path: Path | None = None
    event_name: str | None = None
    slug: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$")
    issue: int | None = Field(None, gt=0)
    issue_file: Path | None = None
    api_url: str = "https://api.github.com"
    server_url: str = "https://github.com"
    remote: str | None = None
    token: SecretStr | None = None
    base: str | None = None
    rules: TriggerRules = Field(default_factory=TriggerRules)
    model: ModelSpec = ModelSpec.parse(DEFAULT_MODEL)
    image: str = DEFAULT_IMAGE
    workdir: str = WORKDIR
    output: Path | None = None
    max_turns: int = Field(100, ge=1)
    max_minutes: float = Field(30.0, gt=0)
    samples: int = Field(1, ge=1, description="test-time scaling: candidate rollouts")
    test_samples: int = Field(0, ge=0, description="test-time scaling: test rollouts")
    test_cmd: str | None = None
    test_timeout: float = Field(600.0, gt=0)
    protect: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    artifact_url: str | None = None
    force: bool = False
    dry_run: bool = False
    output_only: bool = False


class CIResult(BaseModel):
    """`result.json` of a CI run: the outcome, what was published, and the fix run."""

    outcome: str
    exit_code: int
    message: str
    issue: int
    branch: str | None = None
    commit: str | None = None
    pull_request: str | None = None
    comment: str | None = None
    files: list[str] = Field(default_factory=list)
    tests: TestEvidence | None = None
    dry_run: bool = False
    output_only: bool = False
    fix: FixResult

    def stopped(self, stop: Stop) -> None:
        self.outcome, self.exit_code, self.message = stop.code.name.lower(), stop.code, str(stop)


class _Target(BaseModel):
    issue: Issue
    why: str
    trigger: Trigger | None = None


def run_ci(settings: CISettings, say: Callable[[str], None]) -> CIResult:
    """Run the bot once; early skips raise `Stop`, later outcomes are in the result."""
    token = settings.token.get_secret_value() if settings.token else None
    writes = not (settings.dry_run or settings.output_only)
    if writes and not token:
        raise CIError("no token: set GITHUB_TOKEN (or name the variable with --token-env)")
    repo = gitrepo.open_repo(settings.repo)
    target = _target(settings)
    gh = None
    if target.trigger is not None:
        gh = GitHub(settings.api_url, target.trigger.slug, token)
        target.issue = gh.issue(target.issue.number)
        check_issue(target.issue, target.trigger)
    number = target.issue.number
    branch = f"{BRANCH_PREFIX}{number}"
    pull = gh.open_pull(branch) if gh else None
    if gh is not None and not settings.force:
        _check_not_linked(gh, number, pull)
    say(f"fixing #{number}: {target.issue.title} ({target.why})")
    fixed = run_fix(_fix_options(settings, target.issue), progress=say)
    output = Path(fixed.result.output_dir)
    result = CIResult(
        outcome=ExitCode.DONE.name.lower(),
        exit_code=ExitCode.DONE,
        message="",
        issue=number,
        dry_run=settings.dry_run,
        output_only=settings.output_only,
        fix=fixed.result,
    )
    try:
        body = _post_text(settings, repo, target, fixed, result)
        try:
            text = {"patch": fixed.patch.decode("utf-8", "replace"), "text": body}
            guards.check_no_secret(token, text)
        except Stop as stop:
            result.stopped(stop)
            body = ""
            _scrub(output, token)
        (output / "summary.md").write_text(body + "\n" if body else "")
        if result.exit_code == ExitCode.DONE:
            _publish_pull(settings, gh, target, branch, pull, body, token, result, say)
        elif body:
            _publish_comment(settings, gh, number, body, result, say)
    except Exception as exc:  # an API, push or sandbox failure: recorded, then reported
        result.outcome, result.exit_code = "error", ExitCode.ERROR
        result.message = f"{type(exc).__name__}: {first_line(exc)}"
        raise
    finally:
        write_json(output / "result.json", result.model_dump())
        _redact(output, token)
        _write_view(output, token, say)
    return result


def _check_not_linked(gh: GitHub, number: int, pull: PullRequest | None) -> None:
    """Stop when another open pull request (not this bot's own) already names the issue."""
    others = [n for n in gh.linked_pulls(number) if pull is None or n != pull.number]
    if others:
        listed = ", ".join(f"#{n}" for n in others)
        raise Stop(
            ExitCode.LINKED,
            f"skipped: issue #{number} is already linked to open pull request {listed} "
            "(--force runs anyway)",
        )


def _fix_options(settings: CISettings, issue: Issue) -> FixOptions:
    return FixOptions(
        repo=settings.repo,
        issue=f"{issue.title}\n\n{issue.body or ''}".strip(),
        model=settings.model,
        image=settings.image,
        workdir=settings.workdir,
        output=settings.output,
        rollout=RolloutConfig(
            max_turns=settings.max_turns, max_duration_s=settings.max_minutes * 60
        ),
        scaling=TTSOptions(
            samples=settings.samples,
            test_samples=settings.test_samples,
            test_cmd=settings.test_cmd,
            regression_timeout=settings.test_timeout,
        ),
    )


def _post_text(
    settings: CISettings, repo: git.Repo, target: _Target, fixed: FixRun, result: CIResult
) -> str:
    """Judge the patch and run the project's tests on it: the pull request's body,
    or, when a rule refuses it (recorded in `result`), the comment saying why."""
    fix, summary = fixed.result, fixed.summary
    link = settings.artifact_url or "`trajectory.json` in the run's outputs"
    try:
        result.commit = _judge(settings, repo, fixed, result)
        if settings.test_cmd:
            result.tests = run_tests(
                repo,
                result.commit,
                settings.image,
                settings.workdir,
                settings.test_cmd,
                settings.test_timeout,
            )
            if not result.tests.passed:
                raise Stop(
                    ExitCode.TESTS_FAIL,
                    f"refused: `{settings.test_cmd}` fails on the patched tree "
                    f"(exit {result.tests.exit_code})",
                )
        return report.pull_body(target.issue.number, target.why, summary, result.tests, fix, link)
    except Stop as stop:
        result.stopped(stop)
        return report.failure_comment(str(stop), summary, result.tests, fix, link)


def _write_view(output: Path, token: str | None, say: Callable[[str], None]) -> None:
    """The artifact's `index.html`: the run as a page; never one holding the token."""
    try:
        page = view.write(output, output / view.PAGE)[0]
    except view.ViewError as exc:
        say(f"no {view.PAGE}: {exc}")
        return
    if token and token in page.read_text(encoding="utf-8"):
        page.unlink()


def _redact(output: Path, token: str | None) -> None:
    """Replace the token wherever it reached the run's files (the model may have
    echoed it from the issue text): the whole folder is uploaded as an artifact."""
    if not token:
        return
    secret = token.encode()
    for path in output.rglob("*"):
        if path.is_file() and secret in (content := path.read_bytes()):
            path.write_bytes(content.replace(secret, REDACTED))


def _scrub(output: Path, token: str | None) -> None:
    """Delete every output file that holds the token: the folder is uploaded as an
    artifact, which must not publish what the comment was refused for."""
    if not token:
        return
    secret = token.encode()
    for path in output.rglob("*"):
        if path.is_file() and secret in path.read_bytes():
            path.unlink()


def _target(settings: CISettings) -> _Target:
    """The issue to work on: from an issue file, the event payload, or slug and number."""
    if settings.issue_file is not None:
        if not settings.output_only:
            raise CIError("--issue-file needs --output-only: without GitHub there is no PR")
        try:
            text = settings.issue_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CIError(f"--issue-file {settings.issue_file}: cannot read it ({exc})") from None
        if not text:
            raise CIError(f"--issue-file {settings.issue_file} is empty: write the issue in it")
        title, _, body = text.partition("\n")
        issue = Issue(number=settings.issue or 1, title=title, body=body)
        return _Target(issue=issue, why=f"issue from {settings.issue_file.name}")
    if settings.slug is not None or settings.issue is not None:
        if settings.slug is None or settings.issue is None:
            raise CIError("give both --repo-slug OWNER/NAME and --issue N, or neither")
        trigger = Trigger(slug=settings.slug, issue=settings.issue, why="run by hand")
    elif settings.event_path is not None:
        trigger = decide(
            settings.event_name or "", _read_event(settings.event_path), settings.rules
        )
    else:
        raise CIError(
            "no issue: run in a GitHub workflow (GITHUB_EVENT_PATH), or give "
            "--repo-slug OWNER/NAME --issue N, or --issue-file FILE --output-only"
        )
    return _Target(issue=Issue(number=trigger.issue, title=""), why=trigger.why, trigger=trigger)


def _read_event(path: Path) -> Event:
    try:
        return Event.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise CIError(f"cannot read the event file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise CIError(f"{path} is not a GitHub event payload (JSON with an issue)") from None


def _judge(settings: CISettings, repo: git.Repo, fixed: FixRun, result: CIResult) -> str:
    """Commit the patch (an object no ref points at) and return its id, or refuse a
    missing or unsafe patch with `Stop`."""
    fix, patch = fixed.result, fixed.patch
    start = fix.start_commit
    ended = f"the run ended {fix.status}" + (f" ({fix.reason})" if fix.reason else "")
    if not patch:
        raise Stop(ExitCode.NO_FIX, f"no fix: no patch was submitted; {ended}")
    if not fix.patch_applies:
        raise Stop(
            ExitCode.DOES_NOT_APPLY,
            f"refused: the patch does not apply to {start[:12]}: {fix.patch_error}",
        )
    if not fix.success:  # the run stands behind no patch (e.g. cut off before its summary)
        raise Stop(ExitCode.NO_FIX, f"no fix: {ended} before its summary")
    commit = gitrepo.commit_patch(repo, start, patch, commit_message(fixed.trajectory))
    found = guards.changes(repo, start, commit)
    result.files = sorted({change.path for change in found})
    guards.check_paths(result.files, settings.protect)
    guards.check_size(found, patch, settings.limits)
    return commit


def _publish_pull(
    settings: CISettings,
    gh: GitHub | None,
    target: _Target,
    branch: str,
    pull: PullRequest | None,
    body: str,
    token: str | None,
    result: CIResult,
    say: Callable[[str], None],
) -> None:
    """Push the branch and open the draft PR, or update the one a previous run opened."""
    assert result.commit is not None
    result.message = f"fixed: {len(result.files)} file(s) on {branch}"
    if gh is None or settings.output_only:
        result.message += " (outputs only)"
        return
    title = f"Fix #{target.issue.number}: {target.issue.title}"
    remote = settings.remote or f"{settings.server_url.rstrip('/')}/{gh.slug}.git"
    result.branch = branch
    if settings.dry_run:
        action = f"update pull request #{pull.number}" if pull else "open a draft pull request"
        say(f"would push {result.commit[:12]} to {remote} as {branch} (forced)")
        say(f"would {action}: {title}")
        say(body)
        result.message += " (dry run: nothing pushed or posted)"
        return
    push_commit(settings.repo, remote, result.commit, branch, settings.server_url, token)
    if pull is not None:
        made = gh.update_pull(pull.number, title, body)
        result.message = f"updated pull request #{made.number}: {made.html_url}"
    else:
        base = settings.base or (target.trigger and target.trigger.base) or gh.default_branch()
        made = gh.create_pull(title, branch, base, body)
        result.message = f"opened draft pull request #{made.number}: {made.html_url}"
    result.pull_request = made.html_url


def _publish_comment(
    settings: CISettings,
    gh: GitHub | None,
    number: int,
    body: str,
    result: CIResult,
    say: Callable[[str], None],
) -> None:
    """Tell the issue what was tried, so a failed run is not silent."""
    if gh is None or settings.output_only:
        return
    if settings.dry_run:
        say(f"would comment on #{number}:")
        say(body)
        return
    result.comment = gh.comment(number, body)
