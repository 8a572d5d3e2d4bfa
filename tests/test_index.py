"""Index: the exact index against a naive sort, FAISS against exact, persistence and refusals."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contralign.core.errors import ContralignError
from contralign.index import (
    ExactIndex,
    FaissIndex,
    Hit,
    build_index,
    faiss_available,
    load_index,
    save_index,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "contralign"
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")


def naive_search(
    corpus: np.ndarray, queries: np.ndarray, k: int, normalize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Score every (query, row) pair with a loop in float64; sort by (-score, id)."""
    all_scores, all_ids = [], []
    for q in queries:
        scored = []
        for j, v in enumerate(corpus):
            dot = sum(float(a) * float(b) for a, b in zip(q, v, strict=True))
            if normalize:
                dot /= math.sqrt(sum(float(a) ** 2 for a in q)) * math.sqrt(
                    sum(float(b) ** 2 for b in v))
            scored.append((-dot, j))
        scored.sort()
        all_scores.append([-s for s, _ in scored[:k]])
        all_ids.append([j for _, j in scored[:k]])
    return np.array(all_scores), np.array(all_ids)


def random_data(seed: int, n: int = 300, q: int = 12, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    return corpus, queries


# --- exact --------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_size", [7, 64, 100_000])
def test_exact_matches_naive_sort(normalize: bool, chunk_size: int) -> None:
    corpus, queries = random_data(0)
    scores, ids = ExactIndex(corpus, normalize=normalize, chunk_size=chunk_size).search(queries, 10)
    expected_scores, expected_ids = naive_search(corpus, queries, 10, normalize)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (12, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_exact_ties_go_to_the_lower_id_across_chunks() -> None:
    a, b = [1.0, 0.0], [0.0, 1.0]
    corpus = np.array([b, a, b, a, a, b, a, a], dtype=np.float32)  # a at ids 1, 3, 4, 6, 7
    for chunk_size in (1, 2, 3, 8):
        index = ExactIndex(corpus, chunk_size=chunk_size)
        scores, ids = index.search(np.array([a, b], dtype=np.float32), 4)
        assert ids.tolist() == [[1, 3, 4, 6], [0, 2, 5, 1]], chunk_size
        assert scores[0].tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("chunk_size", [64, 1000, 5000])
def test_exact_many_ties_keep_id_order(chunk_size: int) -> None:
    # Only three distinct scores over 2,000 rows: every top-k cut falls inside a block of ties.
    rng = np.random.default_rng(0)
    choices = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    labels = rng.integers(0, 3, 2000)
    corpus = choices[labels]
    for q, label in ((choices[0], 0), (choices[1], 1)):
        _, ids = ExactIndex(corpus, chunk_size=chunk_size).search(q[None, :], 300)
        order = np.lexsort((np.arange(2000), -(corpus @ q)))  # by -score, then id
        assert ids[0].tolist() == order[:300].tolist()
        assert ids[0, :5].tolist() == np.flatnonzero(labels == label)[:5].tolist()


def test_exact_permutation_invariance_and_k_cap() -> None:
    corpus, queries = random_data(1, n=50)
    perm = np.random.default_rng(0).permutation(50)
    _, ids = ExactIndex(corpus).search(queries, 5)
    _, permuted_ids = ExactIndex(corpus[perm]).search(queries, 5)
    np.testing.assert_array_equal(perm[permuted_ids], ids)
    scores, ids = ExactIndex(corpus[:3]).search(queries, 10)  # k is capped at N
    assert scores.shape == ids.shape == (12, 3)


def test_exact_rejects_bad_input() -> None:
    corpus, queries = random_data(2)
    index = ExactIndex(corpus)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="dimension 3 does not match the index"):
        index.search(queries[:, :3], 5)
    with pytest.raises(ValueError, match="2-D"):
        ExactIndex(corpus[0])
    with pytest.raises(ValueError, match="NaN"):
        ExactIndex(np.full((2, 2), np.nan, dtype=np.float32))


# --- faiss --------------------------------------------------------------------------------


@needs_faiss
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faiss_matches_exact(normalize: bool, seed: int) -> None:
    corpus, queries = random_data(seed, n=2000, q=40, d=32)
    exact_scores, exact_ids = ExactIndex(corpus, normalize=normalize).search(queries, 10)
    faiss_scores, faiss_ids = FaissIndex(corpus, normalize=normalize).search(queries, 10)
    assert faiss_scores.dtype == np.float32 and faiss_ids.dtype == np.int64
    np.testing.assert_array_equal(faiss_ids, exact_ids)
    np.testing.assert_allclose(faiss_scores, exact_scores, atol=1e-5)
    capped_scores, capped_ids = FaissIndex(corpus[:4]).search(queries, 10)
    assert capped_ids.shape == (40, 4) and (capped_ids >= 0).all()


def test_build_index_backends() -> None:
    corpus, _ = random_data(3)
    assert isinstance(build_index(corpus, "exact"), ExactIndex)
    expected = FaissIndex if faiss_available() else ExactIndex
    assert isinstance(build_index(corpus, "auto"), expected)
    if faiss_available():
        assert isinstance(build_index(corpus, "faiss"), FaissIndex)
    with pytest.raises(ValueError, match="'annoy'"):
        build_index(corpus, "annoy")  # type: ignore[arg-type]


def test_imports_stay_light_and_layered() -> None:
    code = (
        "import sys, contralign.index, contralign.evaluation; "
        "heavy = [m for m in ('faiss', 'torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # The index layer imports only contralign.core (and itself).
    for path in (SRC / "index").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module is not None and module.startswith("contralign"):
                assert module.startswith(("contralign.core", "contralign.index")), (path, module)


# --- persistence --------------------------------------------------------------------------


class FakeEncoder:
    """Embeds a text as a fixed random vector seeded by the text; has a fingerprint."""

    def __init__(self, fingerprint: str = "fp-1", dim: int = 8) -> None:
        self._fingerprint = fingerprint
        self.dim = dim

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        rows = [np.random.default_rng(sum(map(ord, t)) * 7919 + len(t)).standard_normal(self.dim)
                for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)

    def fingerprint(self) -> str:
        return self._fingerprint


TEXTS = ["the cat sat", "a dog barked", "rain tomorrow", "stock prices fell", "bread recipe"]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]


@pytest.fixture()
def index_dir(tmp_path: Path) -> Path:
    encoder = FakeEncoder()
    return save_index(tmp_path / "idx", encoder.encode(TEXTS, 8), IDS, TEXTS,
                      encoder.fingerprint(), "fake-model")


@pytest.mark.parametrize("backend", ["exact", "auto"])
def test_save_load_round_trip(index_dir: Path, backend: Any) -> None:
    assert sorted(p.name for p in index_dir.iterdir()) == [
        "embeddings.npy", "index.json", "items.jsonl"]
    meta = json.loads((index_dir / "index.json").read_text())
    assert (meta["fingerprint"], meta["model_name"], meta["dim"], meta["count"]) == (
        "fp-1", "fake-model", 8, 5)
    assert "created" in meta
    loaded = load_index(index_dir, backend=backend)
    assert loaded.ids == IDS and loaded.texts == TEXTS and len(loaded) == 5
    np.testing.assert_array_equal(np.load(index_dir / "embeddings.npy"),
                                  FakeEncoder().encode(TEXTS, 8))
    hits = loaded.search(FakeEncoder(), ["rain tomorrow", "a dog barked"], k=3)
    assert [h[0].id for h in hits] == ["doc-2", "doc-1"]
    top = hits[0][0]
    assert (top.id, top.text) == ("doc-2", "rain tomorrow") and isinstance(top, Hit)
    assert top.score == pytest.approx(1.0, abs=1e-6)
    assert all(len(h) == 3 and h[0].score >= h[1].score >= h[2].score for h in hits)


def test_fingerprint_mismatch_is_refused(index_dir: Path) -> None:
    loaded = load_index(index_dir)
    with pytest.raises(ContralignError) as info:
        loaded.search(FakeEncoder(fingerprint="fp-2"), ["rain"], k=1)
    assert str(info.value) == (
        "index was built with model fake-model (fingerprint fp-1), query model has fingerprint fp-2"
    )


def test_load_never_unpickles(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real_load = np.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_index(index_dir)
    assert calls and all(c.get("allow_pickle") is False for c in calls)
    monkeypatch.undo()
    # An object array (a pickle inside .npy) is refused, not executed.
    np.save(index_dir / "embeddings.npy", np.array([{"x": 1}] * 5, dtype=object),
            allow_pickle=True)
    _restamp(index_dir)  # a forged index.json that vouches for the pickle
    with pytest.raises(ContralignError, match="embeddings.npy: cannot read embeddings"):
        load_index(index_dir)
    for path in SRC.glob("index/*.py"):
        assert "allow_pickle=True" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "file"),
    [
        (lambda d: (d / "index.json").unlink(), "index.json"),
        (lambda d: (d / "index.json").write_text("{not json"), "index.json"),
        (lambda d: (d / "index.json").write_text('{"fingerprint": "x"}'), "index.json"),
        (lambda d: (d / "embeddings.npy").unlink(), "embeddings.npy"),
        (lambda d: (d / "embeddings.npy").write_bytes(b"\x93NUMPY garbage"), "embeddings.npy"),
        (lambda d: np.save(d / "embeddings.npy", np.zeros((4, 8), np.float32)), "embeddings.npy"),
        (lambda d: np.save(d / "embeddings.npy", np.zeros((5, 8), np.float64)), "embeddings.npy"),
        (lambda d: (d / "items.jsonl").unlink(), "items.jsonl"),
        (lambda d: (d / "items.jsonl").write_text('{"id": "a", "text": "b"}\n'), "items.jsonl"),
        (lambda d: (d / "items.jsonl").write_text("[1]\n" * 5), "items.jsonl:1"),
    ],
)
def test_damaged_index_is_a_one_line_error(index_dir: Path, damage: Any, file: str) -> None:
    """Each damage is caught by the checksums, and also by the structural checks behind them
    when index.json is re-stamped to match (a forged or hand-edited index)."""
    damage(index_dir)
    for restamp in (False, True):
        if restamp and (index_dir / "index.json").is_file() and file != "index.json":
            _restamp(index_dir)
        with pytest.raises(ContralignError) as info:
            load_index(index_dir)
        message = str(info.value)
        where = file if restamp else file.split(":")[0]  # the checksum names the file only
        assert f"{index_dir / where}" in message and "\n" not in message


@pytest.mark.parametrize("name", ["embeddings.npy", "items.jsonl"])
def test_a_changed_byte_is_refused_naming_the_file(index_dir: Path, name: str) -> None:
    path = index_dir / name
    data = bytearray(path.read_bytes())
    data[-2] ^= 1  # one bit of the last value / text: the structure still reads
    path.write_bytes(bytes(data))
    with pytest.raises(ContralignError, match=f"{path}: damaged: its checksum differs"):
        load_index(index_dir)


def _restamp(folder: Path) -> None:
    from contralign.core.io import folder_checksums

    meta = json.loads((folder / "index.json").read_text())
    present = [name for name in ("embeddings.npy", "items.jsonl") if (folder / name).is_file()]
    meta["sha256"] = {**meta["sha256"], **folder_checksums(folder, present)}
    (folder / "index.json").write_text(json.dumps(meta))


def test_missing_folder_and_bad_save(tmp_path: Path) -> None:
    with pytest.raises(ContralignError, match="index folder not found"):
        load_index(tmp_path / "nothing")
    vectors = FakeEncoder().encode(TEXTS, 8)
    with pytest.raises(ValueError, match="distinct"):
        save_index(tmp_path / "x", vectors, ["a"] * 5, TEXTS, "fp", "m")
    with pytest.raises(ValueError, match="differ in length"):
        save_index(tmp_path / "x", vectors, IDS[:4], TEXTS[:4], "fp", "m")


def test_failed_save_leaves_the_old_index(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name: p.read_bytes() for p in index_dir.iterdir()}

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_index(index_dir, np.zeros((1, 8), np.float32), ["n"], ["new"], "fp-9", "other")
    assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == before
    assert sorted(p.name for p in index_dir.parent.iterdir()) == ["idx"]  # no temporary left
