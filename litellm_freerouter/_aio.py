"""``wait_for`` that never turns a cancellation into a normal return.

On Python 3.10 and 3.11 ``asyncio.wait_for`` runs the awaitable as a task of its own and, when
the caller is cancelled in the very turn that task finishes, returns the result and drops the
cancellation (CPython gh-86296, fixed in 3.12): a client that hung up just as its first chunk
arrived would be served on regardless. Here the awaitable runs in the caller's own task, under
``asyncio.timeout`` (3.11+) or, on 3.10, a timer that cancels it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for_310(awaitable: Awaitable[T], seconds: float | None) -> T:
    """Python 3.10's way (no ``asyncio.timeout``): a timer cancels the caller's task, and that
    cancellation, and only that one, becomes ``asyncio.TimeoutError``."""
    if seconds is None:
        return await awaitable
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always awaited from a task
        raise RuntimeError("wait_for must be awaited from a task")
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(max(seconds, 0.0), expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        timer.cancel()


async def _wait_for_timeout(awaitable: Awaitable[T], seconds: float | None) -> T:
    if seconds is None:
        return await awaitable
    async with asyncio.timeout(max(seconds, 0.0)):  # type: ignore[attr-defined,unused-ignore]
        return await awaitable


wait_for = _wait_for_timeout if sys.version_info >= (3, 11) else wait_for_310
