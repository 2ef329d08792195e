"""The `cwm-agent` command: the CLI, and a quiet exit when Ctrl-C lands while it
loads (importing torch and transformers takes seconds, before any handler exists)."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from cwm_agent.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing had started\n")
        raise SystemExit(130) from None
    app()


if __name__ == "__main__":
    main()
