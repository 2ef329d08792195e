"""A bound on what a sandbox writes to the host's Docker disk.

overlay2 takes a size limit (`--storage-opt size`) only on xfs mounted with
pquota; on other backing file systems (ext4 is the common one) nothing stops
`yes > f` inside the container from filling the host. So the container's
writable layer (`SizeRw`) is polled, and a container over its limit is killed,
with the reason kept for the rollout to report.
"""

from __future__ import annotations

import threading

from docker import APIClient

from cwm_agent.sandbox.daemon import LOST_ERRORS

POLL_S = 1.0  # writing between two polls is the most a container overshoots


class DiskWatchdog:
    """Kills `container_id` once its writable layer holds more than `limit` bytes."""

    def __init__(self, api: APIClient, container_id: str, limit: int) -> None:
        self.api = api
        self.container_id = container_id
        self.limit = limit
        self.exceeded: str | None = None  # why the container was killed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cwm-agent-disk", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def size(self) -> int | None:
        found = self.api.containers(all=True, size=True, filters={"id": self.container_id})
        return int(found[0].get("SizeRw") or 0) if found else None

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                size = self.size()
                if size is None:  # the container is gone
                    return
                if size > self.limit:
                    self.exceeded = (
                        f"the sandbox wrote {size / 2**20:.0f} MiB to its disk, over its limit "
                        f"of {self.limit / 2**20:.0f} MiB: the container was stopped"
                    )
                    self.api.kill(self.container_id)
                    return
            except LOST_ERRORS:  # removed under us, or the daemon is gone: nothing to watch
                return
