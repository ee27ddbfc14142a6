"""Polling for tests: the one `wait_for` every test and benchmark uses instead of its own loop, and its coroutine twin
`wait_for_async` for conditions that other tasks of the running event loop make true."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.05, message: str = "") -> T:
    """Call `condition` every `interval` seconds until it returns something truthy, and return that.

    After `timeout` seconds raise AssertionError saying what was awaited: `message`, else the condition's docstring.
    The condition is called once more at the deadline, so a slow machine never fails a check that holds by then. An
    exception from the condition (e.g. an assertion that a process still runs) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or (condition.__doc__ or "").strip() or repr(condition)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def wait_for_async(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.05,
                         message: str = "") -> T:
    """`wait_for` inside a coroutine: sleeps with asyncio.sleep, so the event loop's other tasks run meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or (condition.__doc__ or "").strip() or repr(condition)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
