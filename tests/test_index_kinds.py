"""IVF and HNSW indexes: recall against exact search, the manifest round trip, the CLI, errors.

The corpus is fixed: 10,000 unit vectors of dimension 64 around 50 seeded Gaussian centres
(spread 0.5 per coordinate), so IVF's cells mean something; the queries are 200 fresh draws of
the same mixture. Recall@10 is the share of exact search's top 10 that an index returns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import ContralignError
from contralign.index import (
    AnnIndex,
    ExactIndex,
    IndexConfig,
    IndexConfigError,
    build_ann,
    l2_normalize,
    load_index,
    save_index,
)

pytest.importorskip("faiss")

runner = CliRunner()
DIM = 64


def clustered(count: int, seed: int, clusters: int = 50, spread: float = 0.5) -> np.ndarray:
    """``(count, DIM)`` float32 unit vectors: a seeded centre (fixed set) plus Gaussian noise."""
    centres = np.random.default_rng(7).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, DIM))
    return l2_normalize(points.astype(np.float32))


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return clustered(10_000, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(200, seed=1)


@pytest.fixture(scope="module")
def truth(corpus: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return ExactIndex(corpus).search(queries, 10)[1]  # (Q, 10)


@pytest.fixture(scope="module")
def ivf(corpus: np.ndarray) -> AnnIndex:
    return build_ann(corpus, IndexConfig("ivf"))


@pytest.fixture(scope="module")
def hnsw(corpus: np.ndarray) -> AnnIndex:
    return build_ann(corpus, IndexConfig("hnsw"))


def recall_at_10(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))


def test_ivf_recall_against_exact(ivf: AnnIndex, queries: np.ndarray, truth: np.ndarray) -> None:
    # The defaults for 10,000 vectors: 4 * sqrt(N) = 400 cells, capped at N / 40 = 250.
    assert (ivf.config.nlist, ivf.config.nprobe, ivf.config.train_size) == (250, 8, 10_000)
    scores, ids = ivf.search(queries, 10)
    assert recall_at_10(ids, truth) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    ivf.set_search_params(nprobe=1)  # one cell: neighbours in the next cell are lost
    try:
        assert recall_at_10(ivf.search(queries, 10)[1], truth) < 0.9
    finally:
        ivf.set_search_params(nprobe=8)


def test_ivf_scores_are_cosines(ivf: AnnIndex, corpus: np.ndarray, queries: np.ndarray) -> None:
    scores, ids = ivf.search(queries[:5] * 3.0, 3)  # queries are normalised
    expected = np.einsum("qd,qkd->qk", queries[:5], corpus[ids])
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_hnsw_recall_against_exact(hnsw: AnnIndex, queries: np.ndarray,
                                   truth: np.ndarray) -> None:
    assert recall_at_10(hnsw.search(queries, 10)[1], truth) >= 0.95
    hnsw.set_search_params(ef_search=200)
    try:
        assert recall_at_10(hnsw.search(queries, 10)[1], truth) >= 0.99
    finally:
        hnsw.set_search_params(ef_search=64)


def test_ivf_pq_is_smaller_and_less_exact(corpus: np.ndarray, queries: np.ndarray) -> None:
    import faiss

    pq = build_ann(corpus[:4000], IndexConfig("ivf", nlist=50, nprobe=8, pq=8, pq_bits=6))
    flat = build_ann(corpus[:4000], IndexConfig("ivf", nlist=50, nprobe=8))
    size = {name: faiss.serialize_index(ix.faiss_index).nbytes for name, ix in
            (("pq", pq), ("flat", flat))}
    assert size["pq"] * 4 < size["flat"]
    part = ExactIndex(corpus[:4000]).search(queries, 10)[1]
    assert 0.2 <= recall_at_10(pq.search(queries, 10)[1], part) < 0.9
    assert recall_at_10(flat.search(queries, 10)[1], part) >= 0.95


def test_ivf_is_deterministic(corpus: np.ndarray, queries: np.ndarray, ivf: AnnIndex) -> None:
    again = build_ann(corpus, IndexConfig("ivf"))
    np.testing.assert_array_equal(again.search(queries, 10)[1], ivf.search(queries, 10)[1])


def test_config_errors_name_the_key() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "annoy"}, "kind: unknown value 'annoy'; choose one of exact, ivf, hnsw"),
        ({"kind": "ivf", "nlist": 0}, "nlist: must be a whole number of at least 1 (got 0)"),
        ({"kind": "hnsw", "m": 1}, "m: must be a whole number of at least 2 (got 1)"),
        ({"kind": "ivf", "pq_bits": 17}, "pq_bits: must be between 1 and 16 (got 17)"),
    ]
    for options, message in cases:
        with pytest.raises(IndexConfigError) as info:
            IndexConfig(**options)
        assert str(info.value) == message
    with pytest.raises(IndexConfigError, match="^nlist: 101 cells for 100 vectors"):
        IndexConfig("ivf", nlist=101).resolved(100, DIM)
    with pytest.raises(IndexConfigError, match=r"^nprobe: 9 is more than nlist \(4\)"):
        IndexConfig("ivf", nlist=4, nprobe=9).resolved(100, DIM)
    with pytest.raises(IndexConfigError, match="^pq: 5 sub-vectors do not divide"):
        IndexConfig("ivf", pq=5).resolved(1000, DIM)
    assert isinstance(IndexConfigError("k", "x"), ValueError)


# --- the index folder ---------------------------------------------------------------------


def _save(folder: Path, vectors: np.ndarray, config: IndexConfig | None) -> Path:
    ids = [f"v{i}" for i in range(len(vectors))]
    return save_index(folder, vectors, ids, ids, "fp-1", "fake", config=config)


@pytest.mark.parametrize("config", [IndexConfig("hnsw", m=16, ef_construction=40, ef_search=32),
                                    IndexConfig("ivf", nlist=20, nprobe=4, pq=8)])
def test_manifest_round_trip(tmp_path: Path, corpus: np.ndarray, queries: np.ndarray,
                             config: IndexConfig) -> None:
    vectors = corpus[:2000]
    folder = _save(tmp_path / "idx", vectors, config)
    meta = json.loads((folder / "index.json").read_text())
    assert meta["kind"] == config.kind and meta["format"] == 3
    assert set(meta["sha256"]) == {"embeddings.npy", "items.jsonl", "ann.faiss"}
    expected = config.resolved(len(vectors), DIM)
    assert meta["params"] == expected.params()
    if config.kind == "ivf":
        assert meta["params"] == {"nlist": 20, "nprobe": 4, "pq": 8, "pq_bits": 8,
                                  "train_size": 2000, "seed": 0}
    loaded = load_index(folder)
    assert loaded.kind == config.kind and isinstance(loaded.index, AnnIndex)
    assert loaded.index.config == expected
    built = build_ann(vectors, config)
    np.testing.assert_array_equal(loaded.index.search(queries, 10)[1],
                                  built.search(queries, 10)[1])
    hits = loaded.search_vectors(queries[:2], 3)
    assert [len(h) for h in hits] == [3, 3] and hits[0][0].id.startswith("v")
    assert isinstance(load_index(folder, backend="exact").index, ExactIndex)


def test_search_time_overrides(tmp_path: Path, corpus: np.ndarray) -> None:
    folder = _save(tmp_path / "idx", corpus[:2000], IndexConfig("ivf", nlist=20, nprobe=4))
    loaded = load_index(folder, nprobe=20)
    assert loaded.index.config.nprobe == 20  # type: ignore[attr-defined]
    assert loaded.index.faiss_index.nprobe == 20  # type: ignore[attr-defined]
    with pytest.raises(IndexConfigError, match=r"^nprobe: 21 is more than nlist \(20\)"):
        load_index(folder, nprobe=21)
    with pytest.raises(IndexConfigError, match=r"^ef_search: applies to hnsw indexes only "):
        load_index(folder, ef_search=10)


def test_old_manifest_loads_as_exact(tmp_path: Path, corpus: np.ndarray) -> None:
    folder = _save(tmp_path / "idx", corpus[:50], None)
    meta = json.loads((folder / "index.json").read_text())
    assert (meta["kind"], meta["params"]) == ("exact", {})
    for key in ("kind", "params"):
        del meta[key]
    meta["format"] = 2
    (folder / "index.json").write_text(json.dumps(meta))
    loaded = load_index(folder)
    assert loaded.kind == "exact" and not isinstance(loaded.index, AnnIndex)
    assert loaded.search_vectors(corpus[7:8], 1)[0][0].id == "v7"


def test_bad_or_damaged_ann_folder(tmp_path: Path, corpus: np.ndarray) -> None:
    folder = _save(tmp_path / "idx", corpus[:500], IndexConfig("hnsw", m=8))
    meta_path = folder / "index.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "kind": "annoy"}))
    with pytest.raises(ContralignError, match=r"index.json: kind: unknown value 'annoy'"):
        load_index(folder)
    meta_path.write_text(json.dumps({**meta, "params": {**meta["params"], "colour": 1}}))
    with pytest.raises(ContralignError, match=r"index.json: params: unknown key 'colour'"):
        load_index(folder)
    meta_path.write_text(json.dumps({**meta, "params": {**meta["params"], "kind": "ivf"}}))
    with pytest.raises(ContralignError, match=r"index.json: params: unknown key 'kind'"):
        load_index(folder)  # the kind is the manifest's own key, not a parameter
    meta_path.write_text(json.dumps(meta))
    (folder / "ann.faiss").write_bytes(b"not an index")
    with pytest.raises(ContralignError, match="ann.faiss: damaged"):
        load_index(folder)


# --- the CLI ------------------------------------------------------------------------------


def test_cli_index_hnsw_then_search(tiny_model_dir: Path, pairs_file: Path,
                                    tmp_path: Path) -> None:
    folder = tmp_path / "index"
    result = runner.invoke(app, ["index", str(tiny_model_dir), str(pairs_file), "--column",
                                 "doc", "-o", str(folder), "--kind", "hnsw", "--m", "8",
                                 "--ef-search", "16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "hnsw" and summary["params"]["m"] == 8
    meta = json.loads((folder / "index.json").read_text())
    assert meta["params"] == {"m": 8, "ef_construction": 80, "ef_search": 16}
    docs = [json.loads(line)["doc"] for line in pairs_file.read_text().splitlines()]
    result = runner.invoke(app, ["search", str(folder), docs[3], "-k", "2", "--json",
                                 "--ef-search", "32"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)[0]["hits"]
    assert hits[0]["text"] == docs[3] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 2


@pytest.mark.parametrize(("options", "message"), [
    (["--kind", "annoy"], "index: --kind: unknown value 'annoy'; choose one of exact, ivf, hnsw"),
    (["--kind", "ivf", "--nlist", "0"],
     "index: --nlist: must be a whole number of at least 1 (got 0)"),
    (["--kind", "ivf", "--nlist", "1000"], "index: --nlist: 1000 cells for"),
    (["--kind", "ivf", "--nlist", "2", "--pq", "5"],
     "index: --pq: 5 sub-vectors do not divide the dimension 32"),
    (["--kind", "hnsw", "--ef-construction", "0"],
     "index: --ef-construction: must be a whole number of at least 1 (got 0)"),
    (["--kind", "hnsw", "--nprobe", "4"], "index: --nprobe: applies to --kind ivf only (not hnsw)"),
    (["--ef-search", "4"], "index: --ef-search: applies to --kind hnsw only (not exact)"),
])
def test_cli_index_errors(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path,
                          options: list[str], message: str) -> None:
    folder = tmp_path / "index"
    result = runner.invoke(app, ["index", str(tiny_model_dir), str(pairs_file), "--column",
                                 "doc", "-o", str(folder), *options])
    assert one_line_error(result).startswith(f"error: {message}")
    assert not folder.exists()
