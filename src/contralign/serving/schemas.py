"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI page).

Our own endpoints refuse unknown fields (a typo is an error, not a silent default); the
OpenAI-compatible body ignores them, as clients send fields of newer API versions. Limits that
depend on the server's settings (items, characters, ``k``) are checked by the app.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Strict):
    texts: list[str] = Field(min_length=1, description="Texts to embed.",
                             examples=[["a cat sits on the mat", "stocks fell today"]])


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="One (dim,) vector per text, in order.")


class SimilarityRequest(_Strict):
    pairs: list[tuple[str, str]] = Field(
        min_length=1, description="Pairs of texts to compare.",
        examples=[[["a cat sits on the mat", "a kitten rests on a rug"]]])


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] = Field(description="Cosine similarity of each pair, in order.")


class SearchRequest(_Strict):
    query: str = Field(description="Text to search for.", examples=["contrastive learning"])
    k: int = Field(default=5, description="Number of hits (at most the server's max_k).")


class SearchHit(BaseModel):
    rank: int
    id: str
    text: str = Field(description="The item's text (an image index: the image's key).")
    score: float = Field(description="Cosine similarity to the query.")
    image_url: str | None = Field(default=None,
                                  description="Where the image is served, for image indexes.")


class SearchResponse(BaseModel):
    query: str
    k: int
    modality: str
    hits: list[SearchHit]
    took_ms: float = Field(description="Server time for the search, in milliseconds.")


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body. Token-id inputs are refused (the server takes
    text); ``dimensions`` must be the model's own; ``user`` is accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="The vector, or with encoding_format=base64 its little-endian float32 "
                    "bytes in base64.")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape: ``{"error": {"message": ..., "type": ...}}``."""

    error: ErrorDetail
