"""The embedding server a user would write themselves: the reference side of ``serve_load.py``.

A FastAPI app with a plain ``def`` endpoint that calls the model's ``encode`` on each request's
texts: FastAPI runs a ``def`` endpoint in its thread pool, so concurrent requests each run their
own forward, side by side, with no batching across requests. Same model (loaded by contralign's
``load_tower``, so both servers run the same encoder code), same request and response bodies as
``contralign serve``'s ``POST /embed``, same uvicorn settings (one process, loopback).

Run: ``python benchmarks/naive_server.py MODEL --port 8001``
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pydantic import BaseModel, Field  # noqa: E402


class EmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1)


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


def create_app(model_name: str):  # noqa: ANN201 (FastAPI is imported inside, as in contralign)
    """The app: ``POST /embed`` ``{"texts": [...]}`` -> ``{"model", "dim", "embeddings"}`` and
    ``GET /health``."""
    from fastapi import FastAPI

    from contralign import load_tower

    model = load_tower(model_name)
    app = FastAPI()

    @app.post("/embed", response_model=EmbedResponse)
    def embed(body: EmbedRequest) -> dict:
        vectors = model.encode(body.texts)  # (N, D), one forward per request
        return {"model": model_name, "dim": model.dim, "embeddings": vectors.tolist()}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # The same uvicorn settings as `contralign serve` (one process, warnings only, no access log).
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
