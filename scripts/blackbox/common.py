"""Helpers shared by the black-box scripts: waiting for stanzas and running a test."""
import asyncio
import logging
import sys

TIMEOUT = 10


async def expect(queue, predicate, what, seconds=TIMEOUT):
    """The first item of `queue` matching `predicate`; fails after `seconds`."""
    async def wait():
        while True:
            item = await queue.get()
            if predicate(item):
                return item
    try:
        return await asyncio.wait_for(wait(), seconds)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}")


async def nothing(queue, predicate, seconds=0.7):
    """Asserts nothing matching `predicate` arrives within `seconds`."""
    try:
        await expect(queue, predicate, "nothing", seconds)
    except AssertionError:
        return
    raise AssertionError("an unexpected stanza arrived")


def run(main, name):
    """Runs the test coroutine `main`; exits 1 with the error on any failure."""
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(main())
    except Exception as error:  # any failure is a test failure
        print(f"FAILED: {error!r}")
        sys.exit(1)
    print(f"black-box {name}: OK")
