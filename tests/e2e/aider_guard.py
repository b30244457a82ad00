"""Run a console script (aider's) with every connection beyond this machine refused and logged.

Usage: ``python aider_guard.py LOG SCRIPT [ARG ...]``.  An audit hook sees each name lookup and
connect; anything not on the loopback interface is appended to LOG and fails at once, so that a
download aider or litellm would attempt shows up in the test instead of hanging it.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _host(event: str, args: tuple[Any, ...]) -> str | None:
    """The remote host an audited event reaches for, or None if it stays on this machine."""
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):  # a Unix socket
            return None
        host = address[0]
    else:
        return None
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None or str(host) in LOOPBACK:
        return None
    return str(host)


def main() -> None:
    log, script, *args = sys.argv[1:]

    def audit(event: str, event_args: tuple[Any, ...]) -> None:
        host = _host(event, event_args)
        if host is None:
            return
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{event} {host}\n")
        raise ConnectionRefusedError(f"the test allows no network: {event} {host}")

    sys.addaudithook(audit)
    # As if the script were run directly: its own directory first on the path, not this one's.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
