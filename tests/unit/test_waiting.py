"""The tests' one polling helper (tests/support/waiting.py), synchronous and as a coroutine."""
from __future__ import annotations

import asyncio

import pytest

from tests.support.waiting import wait_for, wait_for_async


def test_wait_for_returns_the_first_truthy_value_and_names_what_timed_out():
    values = iter([0, [], "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0.001) == "ready"
    with pytest.raises(AssertionError, match="timed out after 0.01 s waiting for the answer"):
        wait_for(lambda: None, timeout=0.01, interval=0.001, message="the answer")


async def test_wait_for_async_lets_the_event_loop_make_the_condition_true():
    done: list[str] = []
    asyncio.get_running_loop().call_later(0.01, done.append, "set by the loop")
    assert await wait_for_async(lambda: done, timeout=5, interval=0.001) == ["set by the loop"]
    with pytest.raises(AssertionError, match="waiting for nothing"):
        await wait_for_async(lambda: None, timeout=0.01, interval=0.001, message="nothing")
