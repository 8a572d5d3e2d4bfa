"""Shared fixtures: a tiny real BERT (random weights, real tokenizer) and the shared data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is present in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with the default model's tokenizer, saved as a plain folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from contralign.encoders.resolve import DEFAULT_MODEL, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    model = BertModel(config)
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


PAIRS = [
    ("a cat sits on the mat", "a kitten rests on a rug"),
    ("the stock market fell today", "shares dropped sharply"),
    ("how do I bake bread", "a simple recipe for a loaf"),
    ("the team won the final", "they took the championship"),
    ("rain is expected tomorrow", "the forecast says showers"),
    ("she plays the violin", "a musician with a string instrument"),
    ("the train was late again", "delays on the railway"),
    ("python is a programming language", "code written in python"),
    ("the moon orbits the earth", "our satellite circles the planet"),
    ("he repaired the old bicycle", "fixing a worn bike"),
    ("coffee keeps me awake", "caffeine and sleep"),
    ("the museum opens at nine", "opening hours of the gallery"),
]


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    """A small JSONL file of (query, document) pairs."""
    import json

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": q, "doc": d}) + "\n" for q, d in PAIRS),
                    encoding="utf-8")
    return path


def one_line_error(result, exit_code: int = 2) -> str:
    """The one line a CLI ``result`` printed for a user mistake (exit code 2, no traceback)."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="session")
def tiny_cifar(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 real CIFAR-10 images (every 70th of part a) and their labels, as an .npz."""
    import numpy as np

    with np.load(shared_data / "images" / "cifar10-part-a.npz") as data:
        images, labels = data["images"][::70][:64], data["labels"][::70][:64]
    path = tmp_path_factory.mktemp("cifar") / "tiny.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): their tensors are small, and on a busy 2-core machine every OpenMP
    barrier waits a scheduler slice (~10 ms per op, 100x the work)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
