"""``contralign serve MODEL [--index DIR]``: the HTTP API and the search page (uvicorn)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer

from contralign.cli.common import command, console, err_console, print_json
from contralign.cli.export import Backend, backend_option

SERVE_EXTRA = 'pip install "contralign[serve]"'


@command
def serve_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors or hub id."),
    index: Path | None = typer.Option(None, "--index",
                                      help="Index folder (from `contralign index`) to search."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to bind (default loopback: this machine only)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token: str | None = typer.Option(None, "--token", envvar="CONTRALIGN_SERVE_TOKEN",
                                     help="Bearer token every API call must carry (also from "
                                          "$CONTRALIGN_SERVE_TOKEN, which keeps it out of ps)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1,
                                  help="Most texts per encoder batch."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0,
                                      help="How long a batch waits for more requests (ms)."),
    max_items: int = typer.Option(256, "--max-items", min=1,
                                  help="Most texts (or pairs) per request."),
    max_chars: int = typer.Option(8192, "--max-chars", min=1, help="Most characters per text."),
    max_k: int = typer.Option(100, "--max-k", min=1, help="Most hits per search."),
    max_body: int = typer.Option(4 * 1024 * 1024, "--max-body-bytes", min=1,
                                 help="Largest request body (bytes)."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print where the server listens as JSON."),
    backend: Backend = backend_option(),
) -> None:
    """Serve MODEL over HTTP: /embed, /similarity, /search, OpenAI's /v1/embeddings, /metrics,
    and a search page at /."""
    from contralign.core.errors import ContralignError

    # Before torch loads: idle OpenMP threads sleep instead of spinning between batches. A
    # spinning pool takes the cores the HTTP threads need (measured: 21 ms of CPU per request
    # instead of 5.5 on a busy 2-core machine, 0.67x instead of 3.8x a naive server;
    # benchmarks/serve_load.py). A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError:
        raise ContralignError(f"serve: the server needs the serve extra: {SERVE_EXTRA}") from None
    from contralign.serving.app import create_app
    from contralign.serving.service import ServeSettings, load_served_model

    settings = ServeSettings(max_batch=max_batch, max_wait_s=max_wait_ms / 1000,
                             max_items=max_items, max_chars=max_chars,
                             max_k=max_k, max_body_bytes=max_body, token=token)
    app = create_app(load_served_model(model, index, backend=backend), settings=settings)
    loopback = _is_loopback(host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if as_json:
        print_json({"url": url, "loopback": loopback, "auth": token is not None,
                    "model": model, "index": str(index) if index else None})
    else:
        scope = ("loopback only: reachable from this machine alone" if loopback
                 else "reachable from other machines")
        auth = "; bearer token required" if token else ""
        console.print(f"Serving {model} at {url}/ (search page), {url}/docs (API); {scope}"
                      f"{auth}", highlight=False, soft_wrap=True)
    if not loopback and token is None:
        err_console.print(f"warning: {host} is not a loopback address and no --token is set: "
                          "anyone who can reach this machine can use the server",
                          markup=False, highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` binds loopback only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
