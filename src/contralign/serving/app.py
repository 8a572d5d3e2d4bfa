"""The HTTP API and the search page: ``create_app(model, index, settings) -> FastAPI``.

Endpoints (``docs/serve.md`` has examples): ``POST /embed``, ``POST /similarity``,
``POST /search``, ``POST /v1/embeddings`` (OpenAI's embeddings API), ``GET /info``,
``GET /metrics`` (Prometheus), ``GET /health``, the search page at ``/`` and OpenAPI at
``/docs``. With a token, every endpoint but ``/health``, the page and the OpenAPI docs needs
``Authorization: Bearer <token>``.

Model work never runs on the event loop: texts go through the dynamic batcher (one worker
thread runs the tower on batches gathered from concurrent requests), token counting and index
search run in the thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.security import HTTPBearer

from contralign.index import SearchIndex, load_index
from contralign.serving.batching import BatcherClosedError, DynamicBatcher
from contralign.serving.guards import (
    ApiError,
    BodyLimit,
    RequestMetrics,
    bearer_check,
    install_error_handlers,
)
from contralign.serving.metrics import ServerMetrics
from contralign.serving.schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    SearchRequest,
    SearchResponse,
    SimilarityRequest,
    SimilarityResponse,
)
from contralign.serving.service import (
    ServedModel,
    ServeSettings,
    TokenCounter,
    load_served_model,
    served,
)

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}
# The page loads nothing from elsewhere; its script and style are inline.
PAGE_POLICY = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src 'self' blob: data:")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422)}


def create_app(model: str | Path | ServedModel | Any, index: str | Path | SearchIndex | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """The server's FastAPI app for ``model`` (and ``index``).

    Args:
        model: a model name or folder (loaded as ``contralign serve`` loads it), a loaded text
            tower, or a ``ServedModel``.
        index: an index folder or a loaded ``SearchIndex`` (with a name or tower ``model``).
        settings: limits, batching and the bearer token (default ``ServeSettings()``).

    Raises:
        ContralignError: as ``load_served_model``; an index built with another model.
    """
    settings = settings or ServeSettings()
    service = _as_served(model, index)
    metrics = ServerMetrics()
    counter = TokenCounter(service.query)
    info = {**service.info(), "limits": {
        "max_items": settings.max_items, "max_chars": settings.max_chars,
        "max_k": settings.max_k, "max_body_bytes": settings.max_body_bytes,
        "max_batch": settings.max_batch}, "auth": settings.token is not None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = DynamicBatcher(_encode_with(service.query), max_batch=settings.max_batch,
                                 max_wait_s=settings.max_wait_s,
                                 on_batch=metrics.observe_batch, dim=service.dim)
        await batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(title="contralign", summary="Embeddings, similarity and search of a "
                  "contralign model", lifespan=lifespan, responses=ERRORS)
    install_error_handlers(app)
    guard = [Depends(HTTPBearer(auto_error=False)), Depends(bearer_check(settings.token))]
    limits = _Limits(settings)
    # An image hit's URL names its row: ids may hold any character.
    rows = {item_id: row for row, item_id in enumerate(service.index.ids)} if service.index else {}

    async def embed(texts: list[str], endpoint: str) -> np.ndarray:
        metrics.items.labels(endpoint=endpoint).inc(len(texts))
        try:
            vectors: np.ndarray = await app.state.batcher.embed(texts)
        except BatcherClosedError:
            raise ApiError(503, "the server is shutting down") from None
        return vectors  # (N, D) float32

    @app.post("/embed", dependencies=guard, response_model=EmbedResponse, tags=["embeddings"])
    async def embed_texts(body: EmbedRequest) -> dict[str, Any]:
        """Embed texts: one vector per text, in order."""
        limits.texts(body.texts, "texts")
        vectors = await embed(body.texts, "/embed")
        return {"model": service.name, "dim": service.dim, "embeddings": vectors.tolist()}

    @app.post("/similarity", dependencies=guard, response_model=SimilarityResponse,
              tags=["embeddings"])
    async def similarity(body: SimilarityRequest) -> dict[str, Any]:
        """Cosine similarity of each pair of texts."""
        limits.count(len(body.pairs), "pairs")
        texts = [text for pair in body.pairs for text in pair]
        limits.texts(texts, "pairs", count=False)
        vectors = (await embed(texts, "/similarity")).astype(np.float64)  # (2P, D)
        return {"model": service.name, "scores": _cosines(vectors[0::2], vectors[1::2])}

    @app.post("/search", dependencies=guard, response_model=SearchResponse, tags=["search"])
    async def search(body: SearchRequest) -> dict[str, Any]:
        """The ``k`` items of the index nearest to the query, best first."""
        start = time.perf_counter()
        found = service.index
        if found is None:
            raise ApiError(404, "this server has no index to search (start it with "
                                "--index DIR; /embed and /similarity work without one)")
        if not 1 <= body.k <= settings.max_k:
            raise ApiError(422, f"k: {body.k}; must be between 1 and {settings.max_k}", "k")
        limits.texts([body.query], "query", count=False)
        vectors = await embed([body.query], "/search")
        hits = (await run_in_threadpool(found.search_vectors, vectors, body.k))[0]
        images = found.modality == "image"
        return {"query": body.query, "k": body.k, "modality": found.modality, "took_ms": round(
            1000 * (time.perf_counter() - start), 2), "hits": [
            {"rank": rank, "id": hit.id, "text": hit.text, "score": hit.score,
             "image_url": f"/images/{rows[hit.id]}" if images else None}
            for rank, hit in enumerate(hits, 1)]}

    @app.post("/v1/embeddings", dependencies=guard, response_model=OpenAIEmbeddingResponse,
              tags=["openai"])
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> dict[str, Any]:
        """OpenAI's embeddings API: ``input`` (a string or a list), ``model`` (answered by the
        served model whatever it names), ``encoding_format`` (``float`` or ``base64``: the
        little-endian float32 bytes)."""
        texts = _openai_texts(body.input)
        limits.texts(texts, "input")
        if body.dimensions is not None and body.dimensions != service.dim:
            raise ApiError(422, f"dimensions: {body.dimensions}; this model embeds in "
                                f"{service.dim} dimensions only", "dimensions")
        vectors, counts = await asyncio.gather(embed(texts, "/v1/embeddings"),
                                               run_in_threadpool(counter.count, texts))
        tokens = int(sum(counts))
        return {"object": "list", "model": service.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i,
                          "embedding": _b64(row) if body.encoding_format == "base64"
                          else row.tolist()} for i, row in enumerate(vectors)]}

    @app.get("/info", dependencies=guard, tags=["server"])
    async def get_info() -> dict[str, Any]:
        """The model, its towers, dimension and fingerprints, the index and the limits."""
        return info

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, str]:
        """Liveness: answers without a token."""
        return {"status": "ok"}

    @app.get("/metrics", dependencies=guard, tags=["server"], response_class=Response)
    async def get_metrics() -> Response:
        """Prometheus metrics (text format)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    if service.index is not None and service.index.modality == "image":
        _add_image_route(app, service.index, guard)

    page = resources.files("contralign.serving").joinpath("static/index.html").read_text(
        encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def search_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost: runs first
    return app


def _add_image_route(app: FastAPI, index: SearchIndex, guard: list[Any]) -> None:
    """``GET /images/{row}``: the image file of an image index's row (only files the index
    names by path; an image stored as bytes or an array has no file to serve)."""

    @app.get("/images/{row}", dependencies=guard, tags=["search"],
             response_class=FileResponse)
    async def image(row: int) -> FileResponse:
        """The image of the index's row ``row`` (as its ``image_url`` says)."""
        path = Path(index.texts[row]) if 0 <= row < len(index) else None
        kind = IMAGE_TYPES.get(path.suffix.lower()) if path is not None else None
        if path is None or kind is None or not path.is_absolute() or not path.is_file():
            raise ApiError(404, f"images/{row}: no image file for this row")
        return FileResponse(path, media_type=kind)


class _Limits:
    """The per-request limits of ``ServeSettings``, as 422 errors naming the field."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings

    def count(self, n: int, param: str) -> None:
        if n > self.settings.max_items:
            raise ApiError(422, f"{param}: {n} items; this server takes at most "
                                f"{self.settings.max_items} per request", param)

    def texts(self, texts: list[str], param: str, count: bool = True) -> None:
        if count:
            self.count(len(texts), param)
        for i, text in enumerate(texts):
            where = param if param == "query" else f"{param}.{i}"
            if len(text) > self.settings.max_chars:
                raise ApiError(422, f"{where}: {len(text)} characters; this server takes at "
                                    f"most {self.settings.max_chars} per text", where)
            if not text.strip():
                raise ApiError(422, f"{where}: empty text", where)


def _as_served(model: Any, index: str | Path | SearchIndex | None) -> ServedModel:
    if isinstance(model, ServedModel):
        return model
    if isinstance(model, (str, Path)):
        if isinstance(index, SearchIndex):
            service = load_served_model(model)
            return served(service.name, service.towers, service.query, index)
        return load_served_model(model, index)
    loaded = load_index(index) if isinstance(index, (str, Path)) else index
    return served(str(getattr(model, "source", None) or type(model).__name__),
                  {"tower": model}, model, loaded)


def _encode_with(tower: Any) -> Any:
    """The batcher's encode: one batch of texts -> ``(N, D)`` float32 (on its worker thread)."""

    def encode(texts: list[Any]) -> np.ndarray:
        return np.asarray(tower.encode(list(texts), batch_size=max(len(texts), 1),
                                       show_progress=False), dtype=np.float32)

    return encode


def _openai_texts(given: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """OpenAI's ``input`` as texts.

    Raises:
        ApiError: token ids instead of text, or an empty list.
    """
    if isinstance(given, str):
        return [given]
    if not given:
        raise ApiError(422, "input: empty list; give a string or a list of strings", "input")
    if not all(isinstance(item, str) for item in given):
        raise ApiError(422, "input: token ids are not supported by this server; send text",
                       "input")
    return [str(item) for item in given]


def _cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Row-wise cosine of ``(P, D)`` and ``(P, D)``; 0 where a vector is zero."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (P,)
    dots = np.einsum("pd,pd->p", a, b)  # (P,)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0).tolist()


def _b64(row: np.ndarray) -> str:
    """A vector as OpenAI sends it with ``encoding_format=base64``: little-endian float32."""
    return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
