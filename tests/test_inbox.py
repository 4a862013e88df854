"""The pump's inbox (pipeline.Inbox): FIFO, bounded, one reader."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.gateway import Connected
from sidecar.pipeline import Inbox


def item(n: int) -> Connected:
    return Connected(f"c{n}", resumed=False, gap=False)


async def test_items_come_out_in_the_order_they_went_in() -> None:
    inbox = Inbox(10)
    for n in range(3):
        await inbox.put(item(n))
    inbox.put_nowait(None)
    assert [await inbox.get() for _ in range(4)] == [item(0), item(1), item(2), None]
    assert inbox.qsize() == 0


async def test_a_waiting_reader_gets_the_next_item() -> None:
    inbox = Inbox(10)
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # the reader waits
    assert not reader.done()
    inbox.put_nowait(item(1))
    assert await reader == item(1)


async def test_a_full_inbox_refuses_put_nowait_and_makes_writers_wait_for_room() -> None:
    inbox = Inbox(2)
    inbox.put_nowait(item(0))
    await inbox.put(item(1))
    with pytest.raises(asyncio.QueueFull):
        inbox.put_nowait(item(9))
    writers = [asyncio.create_task(inbox.put(item(n))) for n in (2, 3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in writers) and inbox.qsize() == 2
    got = [await inbox.get()]
    while len(got) < 4:
        got.append(await inbox.get())
    await asyncio.gather(*writers)
    assert got == [item(0), item(1), item(2), item(3)]
    assert inbox.qsize() == 0


async def test_a_cancelled_reader_leaves_the_inbox_usable() -> None:
    inbox = Inbox(2)
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait(item(5))
    assert await inbox.get() == item(5)
