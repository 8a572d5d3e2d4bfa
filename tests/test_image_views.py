"""Image view presets (data.image_views): shapes (multi-crop sizes too), value ranges,
determinism, per-image independence of the drawn parameters, the same batches in-process and
in DataLoader workers, and the config's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contralign.core.errors import ConfigError
from contralign.data import BatchCollator, BatchLoader, PairBatcher, Record
from contralign.data import view_draws as draws
from contralign.data.image_views import (
    IMAGE_VIEWS,
    ImageView,
    ImageViews,
    _jitter,
    augment,
    build_image_views,
    make_image_views,
)
from contralign.encoders.image import ImageTower, ImageTowerConfig
from contralign.encoders.imaging import ImagePreprocessor
from contralign.encoders.resnet import CIFAR_MEAN, CIFAR_STD
from contralign.training.config import TrainConfig


@pytest.fixture(scope="module")
def cifar(shared_data: Path) -> np.ndarray:
    """16 real CIFAR-10 images, (16, 32, 32, 3) uint8."""
    with np.load(shared_data / "images" / "cifar10-part-a.npz") as data:
        return np.asarray(data["images"][::300][:16])


def pixels_of(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 32, 32)


@pytest.mark.parametrize(("name", "params", "sides"), [
    ("simclr", {}, [32, 32]),
    ("simclr", {"size": 24, "views": 3}, [24, 24, 24]),
    ("moco-v2", {}, [32, 32]),
    ("swav", {}, [32, 32] + [14] * 6),  # local side 96/224 of the global one
    ("swav", {"local_size": 16, "local_crops": 2}, [32, 32, 16, 16]),
    ("byol", {}, [32, 32]),
])
def test_each_preset_makes_views_of_its_sizes_in_range(cifar, name, params, sides):
    views = make_image_views(name, **params)
    source = pixels_of(cifar)
    outs = [augment(source, view, list(range(v * 100, v * 100 + 16)))
            for v, view in enumerate(views)]
    assert [tuple(o.shape) for o in outs] == [(16, 3, s, s) for s in sides]
    for out in outs:
        assert out.dtype == torch.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert out.std() > 0.05  # images, not a constant
    # Two views of one image differ (other crops and colours), and differ from the source.
    assert (outs[0] - outs[1]).abs().amax(dim=(1, 2, 3)).min() > 0.05
    if sides[0] == 32:
        assert (outs[0] - source).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_views_are_fixed_by_their_seeds_and_independent_of_the_batch(cifar):
    source = pixels_of(cifar)
    view = make_image_views("simclr", blur=0.5)[0]  # every step of the pipeline in play
    seeds = list(range(16))
    before = torch.random.get_rng_state()
    first = augment(source, view, seeds)
    assert torch.equal(torch.random.get_rng_state(), before)  # global state untouched
    assert torch.equal(first, augment(source, view, seeds))
    # Each image's view is that of its own seed: alone, or in a batch in another order.
    alone = torch.cat([augment(source[i : i + 1], view, [i]) for i in range(16)])
    assert torch.equal(first, alone)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    shuffled = augment(source[order], view, [seeds[i] for i in order])
    assert torch.equal(shuffled, first[order])
    assert not torch.equal(first, augment(source, view, [s + 1000 for s in seeds]))


def kornia_jitter(x: torch.Tensor, view, seeds: list[int]) -> torch.Tensor:
    """The reference: kornia's ``ColorJitter`` module, called once per drawn order on the
    images that drew it (the module takes one order per call)."""
    import kornia.augmentation as K

    module = K.ColorJitter(*view.jitter, p=view.jitter_p)
    params, orders = draws.jitter_params(draws.uniforms(seeds), view)
    out = torch.empty_like(x)
    for order in orders.unique(dim=0):
        rows = (orders == order).all(dim=1).nonzero().squeeze(1)
        group = {key: value[rows] for key, value in params.items()}
        group["order"] = order
        group["forward_input_shape"] = torch.tensor(list(x[rows].shape))
        out[rows] = module(x[rows], params=group)
    return out


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_the_jitter_equals_kornias_module_bit_for_bit(cifar, strength):
    """Each position of the order at once (``_jitter``) against kornia's module per order, on
    colour images, grey ones (three equal channels, as Fashion-MNIST's) and values beyond
    [0, 1] (the module clamps the images its gate selects, and only those)."""
    view = make_image_views("simclr", strength=strength)[0]
    colour = pixels_of(np.concatenate([cifar] * 8))  # (128, 3, 32, 32)
    grey = colour.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    seeds = list(range(7, 7 + 128))
    for x in (colour, grey, colour * 1.2 - 0.1):
        params, orders = draws.jitter_params(draws.uniforms(seeds), view)
        assert len(orders.unique(dim=0)) > 12  # many orders in play
        assert torch.equal(_jitter(x, params, orders), kornia_jitter(x, view, seeds))
    # Hue alone at strength 0 (no image drew a shift) is skipped, as the module skips it.
    flat = ImageView(jitter=(0.4, 0.4, 0.4, 0.0), jitter_p=1.0)
    params, orders = draws.jitter_params(draws.uniforms(seeds), flat)
    assert torch.equal(_jitter(colour, params, orders), kornia_jitter(colour, flat, seeds))


def test_byol_views_are_asymmetric(cifar):
    first, second = make_image_views("byol", blur=[1.0, 0.1])
    assert (first.blur, second.blur, first.solarize, second.solarize) == (1.0, 0.1, 0.0, 0.2)
    # Solarisation (p = 0.2 on the second view) shows as pixels above 0.5 turned dark: with the
    # same seeds the pipelines differ only by it and the blur.
    source = pixels_of(np.repeat(cifar, 8, axis=0))  # 128 images
    seeds = list(range(128))
    a = augment(source, first, seeds)
    b = augment(source, second, seeds)
    changed = (a - b).abs().amax(dim=(1, 2, 3)) > 0.2
    assert 0 < changed.sum() < 128


def test_blur_is_dropped_at_cifar_size_unless_asked():
    simclr = make_image_views("simclr")[0]
    assert simclr.blur_for(32) == 0.0 and simclr.blur_for(224) == 0.5
    assert make_image_views("simclr", blur=0.5)[0].blur_for(32) == 0.5
    assert [v.blur_for(224) for v in make_image_views("byol")] == [1.0, 0.1]
    assert [v.blur_for(32) for v in make_image_views("byol")] == [0.0, 0.0]
    assert make_image_views("moco-v2")[0].scale == (0.2, 1.0)
    swav = make_image_views("swav")
    assert [v.scale for v in swav[1:3]] == [(0.14, 1.0), (0.05, 0.14)]



def test_moco_v2_is_simclr_at_its_crop_and_strength():
    """MoCo v2's `aug_plus` is SimCLR's pipeline at crop area 0.2-1 and strength 0.5; its
    `strength` (1.0 in `moco-v2-images`) scales the jitter as SimCLR's does."""
    assert make_image_views("moco-v2")[0].jitter == (0.4, 0.4, 0.4, 0.1)
    for strength in (0.5, 1.0):
        assert make_image_views("moco-v2", strength=strength) == make_image_views(
            "simclr", scale=[0.2, 1.0], strength=strength)
    assert make_image_views("moco-v2", strength=1.0)[0].jitter == (0.8, 0.8, 0.8, 0.2)

def _records(images: np.ndarray) -> list[Record]:
    from contralign.core.items import ImageItem

    return [Record(line=i + 1, anchor=ImageItem.from_array(image, Path("cifar.npz"), i + 1))
            for i, image in enumerate(images)]


def test_the_hook_gives_the_same_batches_in_workers_and_scales_for_the_tower(cifar):
    preprocessor = ImagePreprocessor(32, CIFAR_MEAN, CIFAR_STD)
    hook = ImageViews(build_image_views([{"name": "swav", "local_crops": 1}]))
    batcher = PairBatcher(_records(cifar), batch_size=8, seed=3)
    collator = BatchCollator(preprocessor, hook)
    runs = [list(BatchLoader(batcher, collator, num_workers=workers).batches(epoch=1))
            for workers in (0, 2)]
    assert len(runs[0]) == 2
    for in_process, in_workers in zip(*runs, strict=True):
        assert [v["pixel_values"].shape[-1] for v in in_process["views"]] == [32, 32, 14]
        assert torch.equal(in_process["anchor"]["pixel_values"],
                           in_process["views"][0]["pixel_values"])
        for a, b in zip(in_process["views"], in_workers["views"], strict=True):
            assert torch.equal(a["pixel_values"], b["pixel_values"])
        low = (0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
        high = (255 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
        values = in_process["views"][0]["pixel_values"]  # (8, 3, 32, 32)
        for c in range(3):
            assert low[c] - 1e-4 <= values[:, c].min() and values[:, c].max() <= high[c] + 1e-4
    # Another epoch draws other views; a process that preprocesses rows 4..7 only (torchrun)
    # draws the same views for them as the whole batch.
    other = next(BatchLoader(batcher, collator).batches(epoch=2))
    assert not torch.equal(other["views"][0]["pixel_values"],
                           runs[0][0]["views"][0]["pixel_values"])
    half = next(BatchLoader(batcher, BatchCollator(preprocessor, hook, shard=(1, 2)))
                .batches(epoch=1))
    assert torch.equal(half["views"][1]["pixel_values"],
                       runs[0][0]["views"][1]["pixel_values"][4:])


def test_the_resnet_tower_embeds_views_of_any_side():
    tower = ImageTower("resnet18-cifar-w8")
    assert (tower.feature_dim, tower.config.image_size) == (64, 32)
    tower.eval()
    for side in (14, 32, 48):
        assert tower({"pixel_values": torch.rand(2, 3, side, side)}).shape == (2, 64)
    # Fashion-MNIST at its own 28 px: the ResNet downsamples 8-fold, so 8 px is its least side.
    native = ImageTower("resnet18-cifar-w8", ImageTowerConfig(image_size=28))
    assert native.preprocessor.pixels(
        [np.zeros((28, 28), dtype=np.uint8)] * 2).shape == (2, 3, 28, 28)
    with pytest.raises(ConfigError, match=r"model.image_size: must be at least 8 for "
                       r"resnet18-cifar-w8 .*, got 4"):
        ImageTower("resnet18-cifar-w8", ImageTowerConfig(image_size=4))


def _config(views: list[dict], model: str = "resnet18-cifar-w8") -> TrainConfig:
    return TrainConfig.model_validate({"model": {"name": model}, "data": {"path": "x.npz"},
                                       "views": views, "objective": {"name": "nt_xent"}})


def test_the_config_checks_image_views():
    assert len(build_image_views(_config([{"name": "swav", "local_crops": 2}]).views)) == 4
    _config([{"name": "simclr", "views": 1}, {"name": "byol"}])  # presets may be combined
    cases = [
        ([{"name": "simclr", "size": 4}], "views.0: view simclr: size must be an integer of "
                                          "at least 8"),
        ([{"name": "swav", "crops": 2}], "views.0: view swav: unknown parameter(s) crops"),
        ([{"name": "byol", "blur": 0.5}], "views.0: view byol: blur must be two probabilities"),
        ([{"name": "simclr", "scale": [0.5, 0.2]}], "scale must be [low, high]"),
        ([{"name": "simclr"}, {"name": "identity"}], "image views (simclr, moco-v2, swav, "
                                                     "byol) and text views do not mix"),
        ([{"name": "simclr", "views": 1}], "views: give at least two views"),
    ]
    for views, message in cases:
        with pytest.raises(ValueError, match=".*" + message.replace("(", r"\(")
                           .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
            _config(views)
    assert sorted(IMAGE_VIEWS) == ["byol", "moco-v2", "simclr", "swav"]


def test_views_of_the_wrong_modality_are_refused():
    from contralign.training.build import build_model, check_modalities

    config = _config([{"name": "identity"}, {"name": "word_deletion"}])
    with pytest.raises(ConfigError, match="views: text views need texts, but x.npz holds "
                                          "images; use image views"):
        check_modalities(config, build_model(config), {"anchor": "image", "positive": "image"})
    image_config = _config([{"name": "simclr"}])
    check_modalities(image_config, build_model(image_config), {"anchor": "image"})
    text_config = _config([{"name": "simclr"}], model="wordllama-256")
    with pytest.raises(ConfigError, match="views: image views need images, but x.npz holds "
                                          "texts"):
        check_modalities(text_config, build_model(text_config), {"anchor": "text"})
