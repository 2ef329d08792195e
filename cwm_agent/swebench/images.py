"""Which image an instance runs in, and the start state made from it.

The repository is at /testbed. Official images keep the instance's environment
in the `testbed` conda env, activated at every shell start; other images run
as they are.
"""

from __future__ import annotations

from cwm_agent.sandbox import LABEL
from cwm_agent.sandbox.config import DEFAULT_SESSION_TIMEOUT_S, WORKDIR
from cwm_agent.swebench.dataset import Instance
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.workspace import Workspace

OFFICIAL_TEMPLATE = "swebench/sweb.eval.x86_64.{official_id}:latest"
BATCH_LABEL = f"{LABEL}.swebench"  # the run or eval a container belongs to
INSTANCE_LABEL = f"{LABEL}.instance"  # the instance a container works on

# Activates the official images' env where there is one; a no-op elsewhere.
ACTIVATE_TESTBED = (
    "if [ -d /opt/miniconda3/envs/testbed ]; then source /opt/miniconda3/bin/activate testbed; fi"
)

# Benchmark hygiene as in CWM's evaluation: only the current branch's history
# stays, so no later commit (the fix) is reachable from anywhere in .git.
HYGIENE = r"""set -e
git config --global --add safe.directory '*'
for remote in $(git remote); do git remote remove "$remote"; done
current=$(git symbolic-ref -q HEAD || true)
git for-each-ref --format='%(refname)' | while read -r ref; do
  if [ "$ref" != "$current" ]; then git update-ref -d "$ref"; fi
done
rm -f .git/FETCH_HEAD .git/ORIG_HEAD
git reflog expire --expire=now --all
git gc --prune=now --quiet
"""


def image_for(instance: Instance, template: str | None = None) -> str:
    """`--image-template`, else the row's own image, else the official name."""
    if template is not None:
        try:
            return template.format(
                instance_id=instance.instance_id, official_id=official_id(instance.instance_id)
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise SwebenchError(
                f"--image-template {template!r}: only {{instance_id}} and {{official_id}} "
                f"may be used ({exc})"
            ) from None
    if instance.image:
        return instance.image
    return OFFICIAL_TEMPLATE.format(official_id=official_id(instance.instance_id))


def official_id(instance_id: str) -> str:
    """Docker Hub forbids `__` in names; the official images spell it `_1776_`."""
    return instance_id.replace("__", "_1776_").lower()


def workspace_for(
    image: str,
    run_id: str,
    *,
    hygiene: bool,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT_S,
    instance_id: str | None = None,
) -> Workspace:
    """The instance's start state: the image's /testbed at its HEAD (hygiene for agents)."""
    labels = {f"{LABEL}.job": "swebench", BATCH_LABEL: run_id, f"{LABEL}.run": run_id}
    if instance_id is not None:
        labels[INSTANCE_LABEL] = instance_id
    return Workspace(
        image=image,
        workdir=WORKDIR,
        prepare=HYGIENE if hygiene else None,
        startup=(ACTIVATE_TESTBED,),
        session_timeout=session_timeout,
        labels=labels,
    )
