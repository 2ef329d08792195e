"""The default sandbox image, built from the Dockerfile shipped in the package."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from cwm_agent.sandbox.errors import ImageNotFoundError

DEFAULT_IMAGE = "cwm-agent-sandbox:latest"
DEFAULT_BASE_IMAGE = "debian:bookworm-slim"


def ensure_image(
    client: docker.DockerClient,
    image: str,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Check `image` exists; the default image is built on first use, others must exist."""
    try:
        client.images.get(image)
        return
    except ImageNotFound:
        if image != DEFAULT_IMAGE:
            raise ImageNotFoundError(
                f"Docker image {image!r} not found: build or pull it "
                f"(e.g. `docker pull {image}`), or leave out --image to use the default"
            ) from None
    base = os.environ.get("CWM_AGENT_BASE_IMAGE", DEFAULT_BASE_IMAGE)
    context = resources.files("cwm_agent.sandbox") / "images"
    try:
        with resources.as_file(context) as folder:
            for chunk in client.api.build(
                path=str(folder), tag=image, buildargs={"BASE_IMAGE": base}, decode=True, rm=True
            ):
                if "error" in chunk:
                    raise BuildError(chunk["error"].strip(), [])
                line = chunk.get("stream", "").strip()
                if line and progress is not None:
                    progress(line)
    except (BuildError, APIError) as exc:
        raise ImageNotFoundError(
            f"cannot build the sandbox image {image} from {base} ({exc}): make the base image "
            "reachable (CWM_AGENT_BASE_IMAGE=IMAGE) or pass --image"
        ) from None
