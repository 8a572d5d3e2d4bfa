"""The HTTP API (``contralign.serving``): every endpoint against the tower and index it serves,
every limit, the bearer token, the OpenAI client against a real uvicorn server, and clients
that disconnect or send garbage."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests import serving_fixtures
from tests.serving_fixtures import paper_titles, running_server

# Fixtures shared with the other serving tests.
static_tower = serving_fixtures.static_tower
titles_index = serving_fixtures.titles_index

TOKEN = "s3cret-token"


def small_settings(**changes: Any) -> Any:
    from contralign.serving.service import ServeSettings

    base = {"max_items": 8, "max_chars": 200, "max_k": 20, "max_body_bytes": 4096}
    return ServeSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def client(static_tower: Any, titles_index: Path) -> Any:
    from contralign.serving.app import create_app

    app = create_app(static_tower, titles_index, small_settings())
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def auth_client(static_tower: Any, titles_index: Path) -> Any:
    from contralign.serving.app import create_app

    app = create_app(static_tower, titles_index, small_settings(token=TOKEN))
    with TestClient(app) as test_client:
        yield test_client


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The one error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type"} <= set(body["error"])
    assert body["error"]["message"]
    return dict(body["error"])


# --- endpoints ----------------------------------------------------------------------------


def test_embed_returns_the_towers_vectors_in_order(client: Any, static_tower: Any) -> None:
    texts = ["a cat sits on the mat", "stock markets fell", "contrastive learning"]
    body = client.post("/embed", json={"texts": texts}).json()
    assert body["dim"] == 256 and body["model"] == "wordllama-256"
    np.testing.assert_allclose(np.array(body["embeddings"]), static_tower.encode(texts),
                               rtol=0, atol=1e-6)


def test_similarity_is_the_cosine_of_each_pair(client: Any, static_tower: Any) -> None:
    pairs = [["a cat sits on the mat", "a kitten rests on a rug"],
             ["a cat sits on the mat", "quarterly earnings report"]]
    scores = client.post("/similarity", json={"pairs": pairs}).json()["scores"]
    a = static_tower.encode([p[0] for p in pairs]).astype(np.float64)
    b = static_tower.encode([p[1] for p in pairs]).astype(np.float64)
    expected = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert scores[0] > scores[1]


def test_search_answers_as_the_index_does(client: Any, static_tower: Any,
                                          titles_index: Path) -> None:
    from contralign.index import load_index

    query = "contrastive learning for sentence embeddings"
    body = client.post("/search", json={"query": query, "k": 5}).json()
    expected = load_index(titles_index).search(static_tower, [query], 5)[0]
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert [h["text"] for h in body["hits"]] == [h.text for h in expected]
    np.testing.assert_allclose([h["score"] for h in body["hits"]],
                               [h.score for h in expected], atol=1e-5)
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert body["hits"][0]["text"] in paper_titles()
    assert body["took_ms"] >= 0 and body["modality"] == "text"


def test_search_without_an_index_is_404(static_tower: Any) -> None:
    from contralign.serving.app import create_app

    with TestClient(create_app(static_tower)) as no_index:
        error = error_of(no_index.post("/search", json={"query": "x"}), 404)
        assert "--index" in error["message"]
        assert no_index.get("/info").json()["index"] is None


def test_info_names_model_towers_and_index(client: Any, static_tower: Any,
                                           titles_index: Path) -> None:
    info = client.get("/info").json()
    index = json.loads((titles_index / "index.json").read_text())
    assert info["model"] == "wordllama-256" and info["dim"] == 256
    assert info["towers"] == [{"name": "tower", "kind": "static", "modality": "text", "dim": 256,
                               "fingerprint": static_tower.fingerprint()}]
    assert info["index"]["size"] == len(paper_titles()) == index["count"]
    assert info["index"]["fingerprint"] == index["fingerprint"] == static_tower.fingerprint()
    assert info["limits"]["max_items"] == 8 and info["auth"] is False


def test_openai_embeddings_float_base64_and_usage(client: Any, static_tower: Any) -> None:
    texts = ["Hello world", "contrastive representation alignment"]
    floats = client.post("/v1/embeddings", json={"input": texts, "model": "any"}).json()
    assert floats["object"] == "list" and floats["model"] == "wordllama-256"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in floats["data"])
    vectors = np.array([d["embedding"] for d in floats["data"]])
    np.testing.assert_allclose(vectors, static_tower.encode(texts), atol=1e-6)
    # Usage: the static tower's own tokenizer (no special tokens), counted independently.
    tokens = sum(len(static_tower.tokenizer.encode(t, add_special_tokens=False).ids)
                 for t in texts)
    assert floats["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens} and tokens > 4
    b64 = client.post("/v1/embeddings", json={"input": texts, "model": "any",
                                              "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in b64["data"]])
    np.testing.assert_array_equal(decoded, vectors.astype(np.float32))
    one = client.post("/v1/embeddings", json={"input": texts[0], "model": "m"}).json()
    assert len(one["data"]) == 1 and one["data"][0]["embedding"] == floats["data"][0]["embedding"]


def test_openai_refuses_token_ids_and_other_dimensions(client: Any) -> None:
    assert error_of(client.post("/v1/embeddings", json={"input": [1, 2, 3], "model": "m"}),
                    422)["param"] == "input"
    assert error_of(client.post("/v1/embeddings", json={"input": "x", "model": "m",
                                                        "dimensions": 64}), 422)["param"] \
        == "dimensions"
    assert client.post("/v1/embeddings", json={"input": "x", "model": "m",
                                               "dimensions": 256}).status_code == 200
    error_of(client.post("/v1/embeddings", json={"input": "x"}), 422)  # model is required
    error_of(client.post("/v1/embeddings", json={"input": "x", "model": "m",
                                                 "encoding_format": "int8"}), 422)


def test_health_docs_metrics(client: Any) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/similarity", "/search", "/v1/embeddings", "/info", "/health",
            "/metrics"} <= set(paths)
    client.post("/embed", json={"texts": ["one", "two", "three"]})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'contralign_requests_total{endpoint="/embed",status="200"}' in text
    assert 'contralign_request_seconds_bucket{endpoint="/embed"' in text
    batches = [line for line in text.splitlines()
               if line.startswith("contralign_batch_size_count")]
    assert batches and float(batches[0].split()[-1]) >= 1
    sums = [line for line in text.splitlines() if line.startswith("contralign_items_total")]
    assert any('endpoint="/embed"' in line and float(line.split()[-1]) >= 3 for line in sums)


def test_the_page_is_served_without_external_resources(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="query"' in page.text and "http://" not in page.text and "https://" not in page.text


# --- limits and malformed requests ----------------------------------------------------------


def test_limits_are_422_naming_the_field(client: Any) -> None:
    assert error_of(client.post("/embed", json={"texts": ["x"] * 9}), 422)["param"] == "texts"
    assert error_of(client.post("/embed", json={"texts": ["ok", "y" * 201]}), 422)["param"] \
        == "texts.1"
    assert client.post("/embed", json={"texts": ["y" * 200] * 8}).status_code == 200
    assert error_of(client.post("/similarity", json={"pairs": [["a", "b"]] * 9}), 422)[
        "param"] == "pairs"
    assert error_of(client.post("/search", json={"query": "q", "k": 21}), 422)["param"] == "k"
    assert error_of(client.post("/search", json={"query": "q", "k": 0}), 422)["param"] == "k"
    assert error_of(client.post("/search", json={"query": "q" * 201}), 422)["param"] == "query"
    assert error_of(client.post("/search", json={"query": "  "}), 422)["param"] == "query"
    assert error_of(client.post("/v1/embeddings", json={"input": ["x"] * 9, "model": "m"}),
                    422)["param"] == "input"
    error_of(client.post("/embed", json={"texts": []}), 422)


def test_body_size_limit_by_header_and_by_stream(client: Any) -> None:
    big = json.dumps({"texts": ["z" * 100] * 50}).encode()  # > 4096 bytes
    assert "4096" in error_of(client.post("/embed", content=big,
                                          headers={"content-type": "application/json"}),
                              413)["message"]

    def chunks() -> Any:  # no Content-Length: a chunked upload that grows past the limit
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"]}'

    error_of(client.post("/embed", content=chunks(),
                         headers={"content-type": "application/json"}), 413)
    assert client.get("/health").status_code == 200


def test_malformed_bodies_are_4xx_in_one_shape(client: Any) -> None:
    json_header = {"content-type": "application/json"}
    assert "JSON" in error_of(client.post("/embed", content=b'{"texts": [', headers=json_header),
                              400)["message"]
    error_of(client.post("/embed", json={"texts": "not a list"}), 422)
    error_of(client.post("/embed", json={"texts": [1, 2]}), 422)
    error_of(client.post("/embed", json={"texts": ["a"], "typo": 1}), 422)
    error_of(client.post("/embed", json=[1, 2]), 422)
    error_of(client.post("/similarity", json={"pairs": [["only one"]]}), 422)
    error_of(client.post("/search", json={"query": "q", "k": "five"}), 422)
    error_of(client.get("/embed"), 405)
    error_of(client.get("/no/such/path"), 404)
    assert client.get("/health").status_code == 200


# --- authentication -----------------------------------------------------------------------


def test_bearer_token(auth_client: Any) -> None:
    for method, path, body in (("post", "/embed", {"texts": ["a"]}), ("get", "/info", None),
                               ("get", "/metrics", None),
                               ("post", "/v1/embeddings", {"input": "a", "model": "m"}),
                               ("post", "/search", {"query": "a"}),
                               ("post", "/similarity", {"pairs": [["a", "b"]]})):
        call = getattr(auth_client, method)
        kwargs = {"json": body} if body is not None else {}
        missing = call(path, **kwargs)
        assert error_of(missing, 401)["type"] == "authentication_error"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        error_of(call(path, headers={"Authorization": "Bearer wrong"}, **kwargs), 401)
        error_of(call(path, headers={"Authorization": TOKEN}, **kwargs), 401)  # no scheme
        good = call(path, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
        assert good.status_code == 200, (path, good.text)
    # Open without a token: liveness, the page (its script asks for the token), the docs.
    for path in ("/health", "/", "/docs", "/openapi.json"):
        assert auth_client.get(path).status_code == 200, path
    assert auth_client.get("/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()["auth"]


# --- loading ------------------------------------------------------------------------------


def test_an_index_of_another_model_is_refused(titles_index: Path) -> None:
    from contralign import load_tower
    from contralign.core.errors import ContralignError
    from contralign.serving.app import create_app

    other = load_tower("wordllama-256", max_length=4)  # truncates: embeds differently
    with pytest.raises(ContralignError, match="fingerprint"):
        create_app(other, titles_index)
    with pytest.raises(ContralignError, match="fingerprint"):
        create_app("sentence-transformers/all-MiniLM-L6-v2", titles_index)


def test_default_minilm_model(tmp_path: Path) -> None:
    """The default model by name: embeddings, token counts with special tokens, search."""
    from tests.serving_fixtures import build_titles_index

    from contralign import load_tower
    from contralign.serving.app import create_app

    name = "sentence-transformers/all-MiniLM-L6-v2"
    tower = load_tower(name)
    index = build_titles_index(tower, tmp_path / "minilm", name)
    texts = ["How do contrastive objectives align two views?", "a cat"]
    with TestClient(create_app(name, index)) as minilm:
        body = minilm.post("/v1/embeddings", json={"input": texts, "model": name}).json()
        np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]),
                                   tower.encode(texts), atol=1e-5)
        tokens = sum(len(tower.tokenizer(t)["input_ids"]) for t in texts)  # [CLS] ... [SEP]
        assert body["usage"]["prompt_tokens"] == tokens
        hits = minilm.post("/search", json={"query": "image-text contrastive pretraining",
                                            "k": 3}).json()["hits"]
        assert len(hits) == 3 and hits[0]["score"] >= hits[2]["score"] > 0.3
        assert minilm.get("/info").json()["dim"] == 384


def test_image_index_serves_its_image_files(static_tower: Any, tmp_path: Path) -> None:
    """An index that holds images (by path) answers with each hit's image URL and serves it."""
    from PIL import Image

    from contralign.index import save_index
    from contralign.serving.app import create_app

    captions = ["a red square", "a blue square", "a green square"]
    paths = []
    for caption in captions:
        path = tmp_path / f"{caption.split()[1]}.png"
        Image.new("RGB", (8, 8), caption.split()[1]).save(path)
        paths.append(str(path.resolve()))
    index = save_index(tmp_path / "images", static_tower.encode(captions), ["r", "b", "g"], paths,
                       model_fingerprint=static_tower.fingerprint(), model_name="wordllama-256",
                       modality="image")
    with TestClient(create_app(static_tower, index)) as images:
        hits = images.post("/search", json={"query": "blue", "k": 3}).json()["hits"]
        assert hits[0]["id"] == "b" and hits[0]["image_url"] == "/images/1"
        image = images.get(hits[0]["image_url"])
        assert image.headers["content-type"] == "image/png"
        assert image.content == Path(paths[1]).read_bytes()
        error_of(images.get("/images/7"), 404)
        error_of(images.get("/images/-1"), 404)


# --- a real server: the OpenAI client, concurrency, disconnects --------------------------


@pytest.fixture(scope="module")
def server(static_tower: Any, titles_index: Path) -> Any:
    from contralign.serving.app import create_app

    app = create_app(static_tower, titles_index, small_settings(token=TOKEN))
    with running_server(app) as url:
        yield url


def test_openai_client_against_the_server(server: str, static_tower: Any) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)
    texts = ["contrastive learning", "a cat sits on the mat"]
    expected = static_tower.encode(texts)
    for encoding in ("float", "base64"):
        result = client.embeddings.create(model="wordllama-256", input=texts,
                                          encoding_format=encoding)  # type: ignore[arg-type]
        rows = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
                if isinstance(d.embedding, str) else d.embedding for d in result.data]
        assert isinstance(result.data[0].embedding, str) == (encoding == "base64")
        np.testing.assert_allclose(np.array(rows), expected, atol=1e-6)
        assert result.usage.prompt_tokens == result.usage.total_tokens > 0
        assert result.model == "wordllama-256"
    # Without encoding_format the client asks for base64 and decodes it into floats itself.
    default = client.embeddings.create(model="x", input="a cat sits on the mat")
    np.testing.assert_allclose(default.data[0].embedding, expected[1], atol=1e-6)
    import openai

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="x", input="a")
    with pytest.raises(openai.UnprocessableEntityError, match="at most 8"):
        client.embeddings.create(model="x", input=["a"] * 9)


def test_concurrent_requests_get_their_own_rows(server: str, static_tower: Any) -> None:
    import httpx

    texts = [f"{word} number {i}" for i, word in enumerate(paper_titles()[:24])]
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            results[i] = http.post(f"{server}/embed", json={"texts": texts[i:i + 3]}).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(0, 24, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, body in results.items():
        np.testing.assert_allclose(np.array(body["embeddings"]),
                                   static_tower.encode(texts[i:i + 3]), atol=1e-6)
    assert len(results) == 8


def _health(url: str) -> int:
    import httpx

    return httpx.get(f"{url}/health", timeout=10).status_code


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_clients_that_disconnect_do_not_take_the_server_down(server: str) -> None:
    body = json.dumps({"texts": ["a cat sits on the mat"] * 4}).encode()
    head = (f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    # Headers and half a body, then gone.
    with _raw(server) as sock:
        sock.sendall(head + body[: len(body) // 2])
    # A whole request, then gone before reading the answer.
    for _ in range(5):
        with _raw(server) as sock:
            sock.sendall(head + body)
    # Headers only, then gone; and a connection that sends garbage.
    with _raw(server) as sock:
        sock.sendall(head)
    with _raw(server) as sock:
        sock.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)
    time.sleep(0.2)  # let the server notice the closed sockets
    assert _health(server) == 200
    # And it still embeds.
    with _raw(server) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")


def test_malformed_bodies_do_not_take_the_server_down(server: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    bad = [b"{", b"null", b"[]", b'{"texts": null}', b'{"texts": [null]}', b"\xff\xfe\x00",
           b'{"texts": ["a"]}' * 3, b'{"texts": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
           b'{"input": {"nested": 1}, "model": "m"}']
    for payload in bad:
        for path in ("/embed", "/v1/embeddings", "/search", "/similarity"):
            response = httpx.post(f"{server}{path}", content=payload, headers=headers, timeout=10)
            assert 400 <= response.status_code < 500, (path, payload[:30], response.text)
            assert set(response.json()) == {"error"}
    assert _health(server) == 200


# --- the command --------------------------------------------------------------------------


def test_serve_command_starts_on_loopback(titles_index: Path, tmp_path: Path) -> None:
    """``contralign serve`` in a process of its own: says it listens on loopback only, answers,
    and ends on SIGTERM."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CONTRALIGN_SERVE_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "contralign.cli.app", "serve", "wordllama-256", "--index",
         str(titles_index), "--port", str(port)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line and "loopback only" in line, line
        assert "bearer token required" in line
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        hits = httpx.post(f"http://127.0.0.1:{port}/search", json={"query": "contrastive"},
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()["hits"]
        assert len(hits) == 5
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_command_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import one_line_error
    from typer.testing import CliRunner

    from contralign.cli.app import app

    runner = CliRunner()
    missing = one_line_error(runner.invoke(app, ["serve", "wordllama-256", "--index",
                                                 str(tmp_path / "none")]))
    assert "index folder not found" in missing
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the serve extra not installed
    line = one_line_error(runner.invoke(app, ["serve", "wordllama-256"]))
    assert 'pip install "contralign[serve]"' in line


def test_loopback_addresses() -> None:
    from contralign.cli.serve import _is_loopback

    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_a_model_of_two_towers_queries_through_the_other_tower(tmp_path: Path) -> None:
    """An index embedded by one tower of a model of several is searched with queries embedded by
    the other tower, as ``contralign search`` does; ``/info`` lists both towers."""
    from contralign import load_tower
    from contralign.encoders.model import AlignmentModel
    from contralign.index import load_index, save_index
    from contralign.serving.app import create_app

    query_tower = load_tower("wordllama-256")
    doc_tower = load_tower("wordllama-256", max_length=6)  # embeds documents differently
    folder = tmp_path / "two-towers"
    AlignmentModel({"query": query_tower, "doc": doc_tower},
                   {"anchor": "query", "positive": "doc"}).save(folder)
    doc = load_tower(folder, tower="doc")
    titles = paper_titles()
    index = save_index(tmp_path / "index", doc.encode(titles), [str(i) for i in
                                                                range(len(titles))],
                       titles, model_fingerprint=doc.fingerprint(), model_name=str(folder),
                       tower="doc")
    # Long enough for the document tower's truncation to matter: the towers rank differently.
    query = "graph neural networks for molecules and proteins with contrastive sentence embeddings"
    expected = load_index(index).search(load_tower(folder, tower="query"), [query], 4,
                                        indexed_by=doc)[0]
    through_doc = load_index(index).search(doc, [query], 4)[0]
    assert [h.id for h in expected] != [h.id for h in through_doc]
    with TestClient(create_app(str(folder), index)) as two:
        hits = two.post("/search", json={"query": query, "k": 4}).json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in expected]
        info = two.get("/info").json()
        assert info["query_tower"] == "query" and info["index"]["tower"] == "doc"
        assert sorted(t["name"] for t in info["towers"]) == ["doc", "query"]
