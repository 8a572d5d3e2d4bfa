"""Dynamic batching: concurrent embedding requests gathered into one encoder call.

A server that encodes each request on its own runs the model once per request: on a CPU, many
small forwards cost far more than one forward of the same rows, and threads running the model at
once fight over the same cores. Dedicated embedding servers (infinity, text-embeddings-inference)
queue requests instead and let one worker encode whatever is queued as one batch. This module does
the same for any ``encode(items) -> (N, D)`` callable:

- **one worker thread** runs ``encode``; the event loop only queues items and receives results
  (``loop.call_soon_threadsafe``), so it never blocks on the model;
- **bounded wait**: the worker takes what is queued and, while the batch holds fewer than
  ``max_batch`` items, waits at most ``max_wait_s`` for more (under load, requests queue while
  the previous batch runs, so batches fill without waiting);
- **bounded batch**: at most ``max_batch`` items per call; a larger request is split across
  batches and its rows reassembled in input order;
- **isolation**: a request whose caller is cancelled (a client that disconnected) is dropped
  without touching the others; when ``encode`` raises on a batch of several requests, each
  request is encoded again on its own, so only the requests whose own items fail get the error,
  and the worker keeps running.

Sorting a batch by length is left to the encoder (``TextEncoder.encode`` sorts by token count;
the static tower needs no padding at all).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The batcher is closed (or was never started): it takes no more requests."""


@dataclass(eq=False)
class _Request:
    """One ``embed`` call: its items, where its rows stand, and the future that gets them."""

    items: list[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    taken: int = 0  # items [0, taken) are in a batch already (worker thread, under the lock)
    filled: int = 0  # rows written into ``out`` so far (worker thread only)
    out: np.ndarray | None = None  # (len(items), D) float32, made when the first rows arrive
    abandoned: bool = False  # cancelled by its caller, failed or closed: the rest is skipped


@dataclass(eq=False)
class _Segment:
    """Items ``[start, stop)`` of one request, as one piece of a batch."""

    request: _Request
    start: int
    stop: int

    @property
    def items(self) -> list[Any]:
        return self.request.items[self.start : self.stop]


class DynamicBatcher:
    """Gather concurrent ``embed`` calls into batches for one ``encode`` callable.

    Args:
        encode: embeds a list of items as a float32 array ``(N, D)`` in input order; called only
            from the batcher's worker thread, one call at a time.
        max_batch: at most this many items per ``encode`` call (>= 1).
        max_wait_s: how long the worker waits for more requests once it has some, while the
            batch is below ``max_batch`` (>= 0; 0 takes only what is queued).
        on_batch: called as ``on_batch(size, seconds)`` after every ``encode`` call (successful
            or not), from the worker thread; an exception in it is logged and ignored.
        dim: the embedding width, for the shape of an empty request's answer and to check
            ``encode``'s output; learnt from the first batch when None.

    Raises:
        ValueError: ``max_batch`` < 1 or ``max_wait_s`` < 0.
    """

    def __init__(
        self, encode: Callable[[list[Any]], np.ndarray], *, max_batch: int = 64,
        max_wait_s: float = 0.005, on_batch: Callable[[int, float], None] | None = None,
        dim: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: {max_batch} is not a positive number of items")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s: {max_wait_s} is negative")
        self.encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.dim = dim
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """Whether the batcher takes requests (started and not closed)."""
        return self._thread is not None and not self._closing

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread that runs ``encode`` (None before ``start``)."""
        return self._thread

    # --- event-loop side ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread.

        Raises:
            RuntimeError: already started, or closed.
        """
        if self._thread is not None or self._closing:
            raise RuntimeError("DynamicBatcher.start: the batcher was already started")
        self._thread = threading.Thread(target=self._run, name="contralign-batcher",
                                        daemon=True)
        self._thread.start()

    async def close(self, *, drain: bool = True) -> None:
        """Stop taking requests, settle the pending ones and join the worker thread.

        Args:
            drain: True encodes every request already queued before the worker stops; False
                fails the queued ones with ``BatcherClosedError`` (a batch already being encoded
                still finishes and is delivered).

        Closing twice is harmless. The thread is joined from a helper thread, so the loop
        keeps running (and delivering results) meanwhile.
        """
        with self._cond:
            self._closing = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
            for request in dropped:
                request.abandoned = True
            self._cond.notify_all()
        for request in dropped:
            _settle(request, BatcherClosedError("the server is shutting down"))
        if self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    async def embed(self, items: Sequence[Any]) -> np.ndarray:
        """Embed ``items`` in a shared batch: ``(len(items), D)`` float32, rows in input order.

        Cancelling the awaiting task (a client that disconnected) drops the request: its items
        not yet in a batch are never encoded, and its rows are discarded.

        Raises:
            BatcherClosedError: the batcher is not started or is closed.
            Exception: whatever ``encode`` raised on this request's items.
        """
        items = list(items)
        if not self.running:
            raise BatcherClosedError("the batcher is not running")
        if not items:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        loop = asyncio.get_running_loop()
        # The request carries its own loop: the caller's, whichever it is (a test client may run
        # each request on a loop of its own).
        request = _Request(items, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise BatcherClosedError("the batcher is closed")
            self._queue.append(request)
            self._cond.notify()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.abandoned = True  # the worker skips what it has not taken yet
            raise

    # --- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (segments := self._gather()) is not None:
                if segments:
                    self._encode_batch(segments)
        except BaseException as error:  # a bug here must not leave callers waiting forever
            logger.exception("dynamic batcher: the worker thread failed")
            with self._cond:
                self._closing = True
                pending = list(self._queue)
                self._queue.clear()
            for request in pending:
                request.abandoned = True
                _settle(request, BatcherClosedError(f"the batcher's worker failed: {error!r}"))
            raise

    def _gather(self) -> list[_Segment] | None:
        """The next batch: what is queued, plus what arrives within ``max_wait_s`` while the
        batch is below ``max_batch``. None when closing with nothing left to encode."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            segments: list[_Segment] = []
            size = self._take(segments, self.max_batch)
            if size == 0:  # nothing queued (closing) or only abandoned requests
                return None if self._closing and not self._queue else segments
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                size += self._take(segments, self.max_batch - size)
            return segments

    def _take(self, segments: list[_Segment], room: int) -> int:
        """Move up to ``room`` queued items into ``segments`` (a request may leave only part
        of its items); returns how many. Call with the lock held."""
        taken = 0
        while self._queue and taken < room:
            request = self._queue[0]
            if request.abandoned:
                self._queue.popleft()
                continue
            stop = min(len(request.items), request.taken + room - taken)
            segments.append(_Segment(request, request.taken, stop))
            taken += stop - request.taken
            request.taken = stop
            if stop == len(request.items):
                self._queue.popleft()
        return taken

    def _encode_batch(self, segments: list[_Segment]) -> None:
        """Encode one batch and deliver its rows; on failure, retry each request alone."""
        segments = [s for s in segments if not s.request.abandoned]
        if not segments:
            return
        try:
            vectors = self._encode_checked([item for s in segments for item in s.items])
        except Exception as error:
            if len({id(s.request) for s in segments}) == 1:
                self._fail(segments[0].request, error)
                return
            # One request's bad items must not fail the others in its batch: each request is
            # encoded on its own, and only the ones that fail again get their own error.
            for segment in segments:
                self._encode_batch([segment])
            return
        row = 0
        for segment in segments:
            n = segment.stop - segment.start
            whole = self._fill(segment, vectors[row : row + n])  # rows (n, D)
            if whole is not None:
                _settle(segment.request, whole)
            row += n

    def _encode_checked(self, items: list[Any]) -> np.ndarray:
        """``encode(items)`` as float32 ``(len(items), D)``, timed and reported to ``on_batch``.

        Raises:
            ValueError: ``encode`` returned another shape (a bug in the encoder callable).
        """
        start = time.perf_counter()
        try:
            vectors = np.asarray(self.encode(items), dtype=np.float32)
        finally:
            self._report(len(items), time.perf_counter() - start)
        if vectors.ndim != 2 or len(vectors) != len(items) or (
                self.dim is not None and vectors.shape[1] != self.dim):
            raise ValueError(f"encode returned an array of shape {vectors.shape} for "
                             f"{len(items)} items (expected ({len(items)}, {self.dim or 'D'}))")
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        return vectors

    def _fill(self, segment: _Segment, rows: np.ndarray) -> np.ndarray | None:
        """Write a segment's rows ``(n, D)`` into its request; returns the request's whole
        array ``(len(items), D)`` once every row is in, else None."""
        request = segment.request
        if request.abandoned:
            return None
        if request.out is None:
            request.out = np.empty((len(request.items), rows.shape[1]), dtype=np.float32)
        request.out[segment.start : segment.stop] = rows
        request.filled += len(rows)
        return request.out if request.filled == len(request.items) else None

    def _fail(self, request: _Request, error: Exception) -> None:
        request.abandoned = True  # its items still queued (a split request) are skipped
        _settle(request, error)

    def _report(self, size: int, seconds: float) -> None:
        if self.on_batch is None:
            return
        try:
            self.on_batch(size, seconds)
        except Exception:
            logger.exception("dynamic batcher: on_batch failed (ignored)")


def _settle(request: _Request, outcome: np.ndarray | BaseException) -> None:
    """Resolve ``request``'s future on its own loop (from any thread) with rows or an error."""

    def resolve() -> None:
        if request.future.done():  # cancelled by its caller meanwhile
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    try:
        request.loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
