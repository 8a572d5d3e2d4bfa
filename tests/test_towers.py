"""The tower contract (core.towers.Tower), over every registered tower kind: modality and
dimension, a picklable preprocessor, forward = project(features), save -> load through the
registry with equal embeddings and the stored fingerprint, which changes with the weights."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import contralign
from contralign.core.towers import Tower
from contralign.encoders import folder as folder_module
from contralign.encoders.loading import TOWERS

TEXTS = ["a cat sits on the mat", "the stock market fell today", "rain tomorrow"]


def _text(tiny_model_dir: Path) -> Tower:
    return contralign.load_tower(str(tiny_model_dir), projection_dim=8, normalize=True)


def _static(tiny_model_dir: Path) -> Tower:
    return contralign.load_tower("wordllama-256", normalize=True)


def _image(tiny_model_dir: Path) -> Tower:
    return contralign.load_tower("efficientnet-lite0", image_size=64, projection_dim=8,
                                 normalize=True)


IMAGES = list(np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8))
FACTORIES = {"text": (_text, TEXTS), "static": (_static, TEXTS), "image": (_image, IMAGES)}


@pytest.fixture(params=sorted(FACTORIES))
def made(request, tiny_model_dir) -> tuple[Tower, list]:
    factory, items = FACTORIES[request.param]
    return factory(tiny_model_dir), items


def test_every_registered_kind_is_covered():
    assert set(FACTORIES) == set(TOWERS)


def test_the_contract(made):
    tower, items = made
    assert isinstance(tower, Tower)
    assert tower.kind in TOWERS and tower.modality in ("text", "image")
    batch = tower.preprocess(items)
    again = pickle.loads(pickle.dumps(tower.preprocessor))(items)
    assert batch.keys() == again.keys() and all(torch.equal(batch[k], again[k]) for k in batch)
    tower.eval()
    with torch.no_grad():
        embedded = tower(batch)
        assert torch.equal(embedded, tower.project(tower.features(batch)))
    assert embedded.shape == (len(items), tower.dim)
    np.testing.assert_allclose(tower.encode(items), embedded.numpy(), rtol=1e-5, atol=1e-6)


def test_save_load_keeps_embeddings_and_the_stored_fingerprint(made, tmp_path, monkeypatch):
    tower, items = made
    expected = tower.encode(items)
    fingerprint = tower.fingerprint()
    tower.save(tmp_path / "tower")
    hashed = []
    real = folder_module.weights_fingerprint
    monkeypatch.setattr(folder_module, "weights_fingerprint",
                        lambda state: hashed.append(1) or real(state))
    import contralign.encoders.image as image_module
    import contralign.encoders.static as static_module
    import contralign.encoders.text as text_module

    for module in (text_module, static_module, image_module):
        monkeypatch.setattr(module, "weights_fingerprint", folder_module.weights_fingerprint)
    loaded = contralign.load_tower(str(tmp_path / "tower"))
    assert type(loaded) is type(tower)
    assert loaded.fingerprint() == fingerprint and not hashed  # read, not recomputed
    np.testing.assert_array_equal(loaded.encode(items), expected)
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.1)
    loaded(loaded.preprocess(items)).sum().backward()
    optimizer.step()
    assert loaded.fingerprint() != fingerprint and hashed  # the weights moved
