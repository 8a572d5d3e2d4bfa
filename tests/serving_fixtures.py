"""Shared by the serving tests: a real index of the bundled papers' titles, and a real uvicorn
server on a free loopback port in a background thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import pytest


def paper_titles() -> list[str]:
    """The titles of ``contralign/resources/papers.jsonl`` (204 real paper titles)."""
    text = resources.files("contralign").joinpath("resources/papers.jsonl").read_text("utf-8")
    return [json.loads(line)["title"] for line in text.splitlines() if line.strip()]


def build_titles_index(tower: Any, folder: Path, name: str) -> Path:
    """An index folder of the paper titles embedded by ``tower``, written by the index layer as
    ``contralign index`` writes it (ids: line numbers)."""
    from contralign.index import save_index

    titles = paper_titles()
    vectors = tower.encode(titles, batch_size=64)
    return save_index(folder, vectors, [str(i) for i in range(1, len(titles) + 1)], titles,
                      model_fingerprint=tower.fingerprint(), model_name=name)


@pytest.fixture(scope="session")
def static_tower() -> Any:
    from contralign import load_tower

    return load_tower("wordllama-256")


@pytest.fixture(scope="session")
def titles_index(static_tower: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_titles_index(static_tower, tmp_path_factory.mktemp("index") / "titles",
                              "wordllama-256")


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields its base URL.

    The socket is bound before the server starts (no race for the port); the server is told
    to exit and joined at the end.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
