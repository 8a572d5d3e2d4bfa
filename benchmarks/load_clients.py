"""The client side of ``serve_load.py``: concurrent keep-alive clients and their measurements.

httpx's ``AsyncClient`` cost about 6 ms of CPU per request on the 2-core development machine,
more than the naive server's own work per request; clients that share the machine with the
server must be cheap, or they set the throughput of both sides. ``Connection`` is therefore a
minimal HTTP/1.1 client on asyncio streams: it POSTs a JSON body on one keep-alive connection
and reads the status and the body (``Content-Length`` or chunked), reconnecting when the server
closes the connection. It costs about 0.2 ms of CPU per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REQUEST_TIMEOUT_S = 120


class Connection:
    """One client's keep-alive HTTP/1.1 connection to ``127.0.0.1:port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``path``; returns ``(status, response body)``."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                          "\r\n\r\n".encode() + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
        if headers.get("transfer-encoding") == "chunked":
            payload = await self._chunked()
        else:
            payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            await self.close()
        return status, payload

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)  # the CRLF after each chunk
        await self.reader.readuntil(b"\r\n")  # the CRLF after the last (empty) chunk
        return b"".join(parts)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def request_body(endpoint: str, text: str, model: str) -> dict[str, Any]:
    """``/embed`` takes ``{"texts": [...]}``; OpenAI-style endpoints ``{"input", "model"}``."""
    return {"texts": [text]} if endpoint == "/embed" else {"input": text, "model": model}


def vectors_of(endpoint: str, answer: dict[str, Any]) -> list[list[float]]:
    if endpoint == "/embed":
        return list(answer["embeddings"])
    return [item["embedding"] for item in answer["data"]]


async def one_request(connection: Connection, endpoint: str, text: str, model: str,
                      dim: int | None) -> tuple[float, str | None, int | None]:
    """Send one request; ``(seconds, error or None, width of the one vector answered)``.

    An error is a failed or dropped request, a non-200 answer, or a body without exactly one
    vector (of width ``dim`` when given).
    """
    body = json.dumps(request_body(endpoint, text, model)).encode()
    start = time.perf_counter()
    try:
        status, payload = await asyncio.wait_for(connection.post(endpoint, body),
                                                 REQUEST_TIMEOUT_S)
        seconds = time.perf_counter() - start
        if status != 200:
            return seconds, f"HTTP {status}: {payload[:200].decode(errors='replace')}", None
        vectors = vectors_of(endpoint, json.loads(payload))
    except Exception as error:  # a refused, dropped or malformed answer is the server's error
        await connection.close()
        return time.perf_counter() - start, f"{type(error).__name__}: {error}", None
    width = len(vectors[0]) if len(vectors) == 1 else None
    if width is None or (dim is not None and width != dim):
        return seconds, f"expected one vector of width {dim}, got {len(vectors)} vectors", None
    return seconds, None, width


@dataclass
class Load:
    """What one timed pass of concurrent clients saw."""

    latencies: list[float] = field(default_factory=list)  # seconds, one per request sent
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the timed part
    stopped_at_time_limit: bool = False
    probes: tuple[Any, Any] = (None, None)  # probe() just before and just after the timed part


async def run_load(port: int, endpoint: str, model: str, texts: list[str], clients: int,
                   per_client: int, warmup: int, time_limit: float,
                   probe: Callable[[], Any] = lambda: None) -> Load:
    """``clients`` concurrent clients, each on its own connection: ``warmup`` untimed requests,
    then ``per_client`` timed ones (client ``c`` sends text ``c * per_client + i``, wrapping);
    no client starts a request after ``time_limit`` seconds. ``probe`` (server CPU, counters)
    runs just before and just after the timed part, while no request is in flight."""
    connections = [Connection(port) for _ in range(clients)]

    async def warm_client(c: int) -> list[int | None]:
        return [(await one_request(connections[c], endpoint, texts[-1 - (c * warmup + i)
                                                                   % len(texts)], model, None))[2]
                for i in range(warmup)]

    widths = {w for ws in await asyncio.gather(*(warm_client(c) for c in range(clients)))
              for w in ws if w is not None}
    dim = widths.pop() if len(widths) == 1 else None
    load = Load()
    deadline = time.monotonic() + time_limit

    async def run_client(c: int) -> None:
        for i in range(per_client):
            if time.monotonic() > deadline:
                load.stopped_at_time_limit = True
                return
            text = texts[(c * per_client + i) % len(texts)]
            seconds, error, _ = await one_request(connections[c], endpoint, text, model, dim)
            load.latencies.append(seconds)
            if error is not None:
                load.errors.append(error)

    before = probe()
    start = time.perf_counter()
    await asyncio.gather(*(run_client(c) for c in range(clients)))
    load.seconds = time.perf_counter() - start
    load.probes = (before, probe())
    for connection in connections:
        await connection.close()
    return load
