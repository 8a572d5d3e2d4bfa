"""DynamicBatcher: concurrent requests share encoder batches, and every request gets exactly the
rows it would get alone, in its own order.

The encoders are the real towers (the static ``wordllama-256`` and the default MiniLM). Where a
test needs requests to pile up while a batch runs, the tower's ``encode`` is wrapped in a gate
(``GatedEncode``): the first call waits until the test opens it, so what the batches hold does
not depend on timing. Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import pytest

from contralign import load_tower
from contralign.serving.batching import BatcherClosedError, DynamicBatcher

TEXTS = [
    "a cat sits on the mat", "the stock market fell sharply today after the announcement",
    "how do I bake bread", "x", "the team won the final in extra time",
    "rain is expected tomorrow", "she plays the violin in an orchestra of forty musicians",
    "the train was late again", "python is a programming language", "the moon",
    "he repaired the old bicycle", "coffee keeps me awake at night when I drink it late",
    "the museum opens at nine", "dogs", "a long sentence about nothing in particular at all",
    "the end",
]
TIMEOUT = 120  # seconds: a broken batcher fails the test instead of hanging it


@pytest.fixture(scope="module")
def static() -> Any:
    return load_tower("wordllama-256")


@pytest.fixture(scope="module")
def minilm() -> Any:
    return load_tower("sentence-transformers/all-MiniLM-L6-v2")


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), TIMEOUT)

    return asyncio.run(bounded())


class GatedEncode:
    """A tower's ``encode`` that records every call (items, thread) and holds the first call
    until ``open()``; with ``poison``, raises on any batch holding that item."""

    def __init__(self, tower: Any, gated: bool = True, poison: str | None = None) -> None:
        self.tower = tower
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.poison = poison

    def __call__(self, items: list[str]) -> np.ndarray:
        self.calls.append(list(items))
        self.threads.add(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot embed {self.poison!r}")
        return self.tower.encode(items)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, TIMEOUT)

    def open(self) -> None:
        self.gate.set()


async def started(encode: Callable[[list[Any]], np.ndarray], **kwargs: Any) -> DynamicBatcher:
    batcher = DynamicBatcher(encode, **kwargs)
    await batcher.start()
    return batcher


async def settle_queue() -> None:
    """Let the loop run the tasks just created until each has queued its request."""
    for _ in range(5):
        await asyncio.sleep(0)


def alone(tower: Any, requests: Sequence[Sequence[str]]) -> list[np.ndarray]:
    return [tower.encode(list(r)) for r in requests]


def requests_of(texts: list[str], sizes: Sequence[int]) -> list[list[str]]:
    out, start = [], 0
    for size in sizes:
        out.append([texts[(start + i) % len(texts)] for i in range(size)])
        start += size
    return out


@pytest.mark.parametrize("tower_name", ["static", "minilm"])
def test_concurrent_requests_share_batches_and_equal_their_own_rows(
        tower_name: str, request: pytest.FixtureRequest) -> None:
    tower = request.getfixturevalue(tower_name)
    requests = requests_of(TEXTS, [1, 3, 2, 5, 1, 4, 2, 1, 6, 3])
    sizes: list[int] = []
    encode = GatedEncode(tower)

    async def main() -> list[np.ndarray]:
        batcher = await started(encode, max_batch=64, on_batch=lambda n, s: sizes.append(n))
        first = asyncio.create_task(batcher.embed(["warm up"]))
        await encode.wait_entered()  # the worker is busy: the next requests queue behind it
        tasks = [asyncio.create_task(batcher.embed(r)) for r in requests]
        await settle_queue()
        encode.open()
        await first
        results = await asyncio.gather(*tasks)
        await batcher.close()
        return results

    results = run(main)
    # The first call held the warm-up; all ten requests (28 items) then formed one batch.
    assert sizes == [1, sum(map(len, requests))]
    for got, expected in zip(results, alone(tower, requests), strict=True):
        assert got.dtype == np.float32 and got.shape == expected.shape
        if tower_name == "static":  # no padding: each row is computed alone in any batch
            np.testing.assert_array_equal(got, expected)
        else:  # padding changes the matrix shapes, so the sums round differently
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_many_concurrent_callers_without_a_gate_get_their_rows(static: Any) -> None:
    requests = requests_of(TEXTS, [1 + i % 4 for i in range(64)])
    sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        batcher = await started(static.encode, max_batch=16, max_wait_s=0.002,
                                on_batch=lambda n, s: sizes.append(n))
        results = await asyncio.gather(*(batcher.embed(r) for r in requests))
        await batcher.close()
        return results

    results = run(main)
    for got, expected in zip(results, alone(static, requests), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert sum(sizes) == sum(map(len, requests)) and max(sizes) <= 16


def test_a_request_larger_than_max_batch_is_split_and_reassembled(static: Any) -> None:
    big = requests_of(TEXTS, [23])[0]
    small = requests_of(TEXTS[5:], [2, 3])
    encode = GatedEncode(static)

    async def main() -> list[np.ndarray]:
        batcher = await started(encode, max_batch=5, max_wait_s=0)
        first = asyncio.create_task(batcher.embed(["hold"]))
        await encode.wait_entered()
        tasks = [asyncio.create_task(batcher.embed(r)) for r in [big, *small]]
        await settle_queue()
        encode.open()
        await first
        results = await asyncio.gather(*tasks)
        await batcher.close()
        return results

    results = run(main)
    # Queue order, 5 items a call: the big request fills four batches and shares the fifth.
    assert [len(c) for c in encode.calls] == [1, 5, 5, 5, 5, 5, 3]
    assert encode.calls[5] == big[20:] + small[0]
    for got, expected in zip(results, alone(static, [big, *small]), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_cancelled_request_is_dropped_and_the_others_are_answered(static: Any) -> None:
    encode = GatedEncode(static)
    kept = [["the moon", "dogs"], ["rain is expected tomorrow"]]

    async def main() -> tuple[list[np.ndarray], bool, bool]:
        batcher = await started(encode, max_batch=64, max_wait_s=0)
        in_flight = asyncio.create_task(batcher.embed(["in flight"]))
        await encode.wait_entered()
        queued = asyncio.create_task(batcher.embed(["cancelled while queued"]))
        tasks = [asyncio.create_task(batcher.embed(r)) for r in kept]
        await settle_queue()
        queued.cancel()
        in_flight.cancel()  # its batch is already running: its rows are thrown away
        await settle_queue()
        encode.open()
        results = await asyncio.gather(*tasks)
        after = await batcher.embed(["after"])  # the worker is still serving
        await batcher.close()
        np.testing.assert_array_equal(after, static.encode(["after"]))
        return results, queued.cancelled(), in_flight.cancelled()

    results, queued_cancelled, in_flight_cancelled = run(main)
    assert queued_cancelled and in_flight_cancelled
    assert ["cancelled while queued"] not in encode.calls
    assert not any("cancelled while queued" in call for call in encode.calls)
    for got, expected in zip(results, alone(static, kept), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_an_encode_error_fails_only_the_request_that_causes_it(static: Any) -> None:
    encode = GatedEncode(static, poison="POISON")
    good = [["the moon"], ["dogs", "the end"], ["coffee"] * 7]
    errors: list[BaseException] = []

    async def main() -> list[np.ndarray]:
        batcher = await started(encode, max_batch=8, max_wait_s=0)
        first = asyncio.create_task(batcher.embed(["hold"]))
        await encode.wait_entered()
        tasks = [asyncio.create_task(batcher.embed(r)) for r in [good[0], ["a", "POISON"],
                                                                  *good[1:]]]
        await settle_queue()
        encode.open()
        await first
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        errors.extend(o for o in outcomes if isinstance(o, BaseException))
        after = await batcher.embed(["after the error"])
        await batcher.close()
        return [o for o in outcomes if not isinstance(o, BaseException)] + [after]

    results = run(main)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "POISON" in str(errors[0])
    # The poisoned batch (8 items: three requests, the third split) failed once; each of its
    # requests was then encoded alone, and only the poisoned one failed again.
    assert encode.calls[1] == ["the moon", "a", "POISON", "dogs", "the end", "coffee", "coffee",
                               "coffee"]
    expected = alone(static, [*good, ["after the error"]])
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_close_drains_queued_requests_by_default(static: Any) -> None:
    encode = GatedEncode(static)
    requests = requests_of(TEXTS, [2, 3, 1])

    async def main() -> tuple[list[np.ndarray], DynamicBatcher]:
        batcher = await started(encode, max_batch=2, max_wait_s=0)
        tasks = [asyncio.create_task(batcher.embed(r)) for r in requests]
        await encode.wait_entered()
        closing = asyncio.create_task(batcher.close())
        await settle_queue()
        with pytest.raises(BatcherClosedError):
            await batcher.embed(["too late"])
        encode.open()
        await closing
        return await asyncio.gather(*tasks), batcher

    results, batcher = run(main)
    assert batcher.thread is not None and not batcher.thread.is_alive()
    for got, expected in zip(results, alone(static, requests), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_close_without_draining_fails_queued_requests(static: Any) -> None:
    encode = GatedEncode(static)

    async def main() -> tuple[list[Any], DynamicBatcher]:
        batcher = await started(encode, max_batch=2, max_wait_s=0)
        in_flight = asyncio.create_task(batcher.embed(["in flight"]))
        await encode.wait_entered()
        queued = [asyncio.create_task(batcher.embed(r)) for r in (["a"], ["b", "c", "d"])]
        await settle_queue()
        closing = asyncio.create_task(batcher.close(drain=False))
        await settle_queue()
        encode.open()
        await closing
        return await asyncio.gather(in_flight, *queued, return_exceptions=True), batcher

    (in_flight, *queued), batcher = run(main)
    np.testing.assert_array_equal(in_flight, static.encode(["in flight"]))
    assert all(isinstance(q, BatcherClosedError) for q in queued)
    assert encode.calls == [["in flight"]]
    assert batcher.thread is not None and not batcher.thread.is_alive()


def test_encode_runs_in_one_worker_thread_never_the_loop_thread(minilm: Any) -> None:
    encode = GatedEncode(minilm, gated=False)

    async def main() -> tuple[int, DynamicBatcher]:
        batcher = await started(encode, max_batch=4, max_wait_s=0.001)
        await asyncio.gather(*(batcher.embed(r) for r in requests_of(TEXTS, [3, 1, 5, 2])))
        await batcher.close()
        return threading.get_ident(), batcher

    loop_thread, batcher = run(main)
    assert batcher.thread is not None
    assert encode.threads == {batcher.thread.ident} and loop_thread not in encode.threads


def test_empty_requests_settings_and_lifecycle(static: Any) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(static.encode, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        DynamicBatcher(static.encode, max_wait_s=-1)

    async def main() -> tuple[np.ndarray, np.ndarray]:
        batcher = DynamicBatcher(static.encode, dim=static.dim)
        with pytest.raises(BatcherClosedError):
            await batcher.embed(["not started"])
        await batcher.start()
        with pytest.raises(RuntimeError):
            await batcher.start()
        empty = await batcher.embed([])
        one = await batcher.embed(("a tuple works too",))
        await batcher.close()
        await batcher.close()  # twice is harmless
        return empty, one

    empty, one = run(main)
    assert empty.shape == (0, static.dim) and empty.dtype == np.float32
    np.testing.assert_array_equal(one, static.encode(["a tuple works too"]))


def test_a_wrong_shape_from_encode_fails_the_request_not_the_worker(static: Any) -> None:
    def encode(items: list[str]) -> np.ndarray:
        return static.encode(items)[:1] if "short" in items else static.encode(items)

    async def main() -> np.ndarray:
        batcher = await started(encode, max_batch=8)
        with pytest.raises(ValueError, match="shape"):
            await batcher.embed(["short", "two"])
        good = await batcher.embed(["fine"])
        await batcher.close()
        return good

    np.testing.assert_array_equal(run(main), static.encode(["fine"]))
