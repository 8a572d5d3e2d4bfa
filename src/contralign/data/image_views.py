"""Image views: the augmentation pipelines of the self-supervised image papers, as view presets.

A preset is a named list of views; each view is one random pipeline applied to every image of a
batch (``kornia.augmentation``: batched, needs only torch):

* ``simclr`` (Chen et al. 2020, arXiv:2002.05709, Appendix A): random resized crop (area
  scale 0.08-1, aspect ratio 3/4-4/3), horizontal flip p = 0.5, colour jitter p = 0.8 of strength
  ``s`` (brightness, contrast, saturation 0.8s, hue 0.2s, in random order; ``s`` = 0.5, the
  CIFAR setting, gives (0.4, 0.4, 0.4, 0.1)), grayscale p = 0.2, Gaussian blur p = 0.5 (kernel
  10% of the side, sigma 0.1-2). For CIFAR the paper drops the blur: with ``blur`` unset, views
  of 32 px or less are not blurred. Two views.
* ``moco-v2`` (Chen et al. 2020, arXiv:2003.04297; the authors' ``aug_plus``): as SimCLR with
  crop scale 0.2-1 and jitter (0.4, 0.4, 0.4, 0.1) (strength 0.5; ``strength`` sets it as
  SimCLR's). Two views.
* ``swav`` (Caron et al. 2020, arXiv:2006.09882): multi-crop: 2 global views at the tower's
  size (scale 0.14-1) and ``local_crops`` (6) local views at ``local_size`` (96/224 of the
  global side; scale 0.05-0.14), SimCLR's colour distortion at strength 1 and blur p = 0.5.
* ``byol`` (Grill et al. 2020, arXiv:2006.07733, Table 6): two asymmetric views: jitter
  (0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale p = 0.2, blur p = 1.0 / 0.1, solarisation
  (threshold 0.5) p = 0 / 0.2. Blur off at 32 px or less unless ``blur`` is given (as solo-learn's
  CIFAR settings).

**The same views everywhere.** Each image's parameters are drawn from a generator keyed by the
batch's position and its row (``view_rng(seed, epoch, batch, row, view)``, as text views), then
the pipeline runs once on the whole batch with those parameters (kornia's ``params=``): the views
do not depend on the number of DataLoader workers, on which rows a process preprocesses
(torchrun), on the gradient cache or on a resume. Torch's global random state is left as it was.

Images are decoded by the tower's preprocessor to its input size (the source of every crop), as
floats in [0, 1]; the views are scaled as the tower expects (``PixelSource``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from contralign.data import view_draws as draws
from contralign.data.batching import Position, Preprocess, caption_items, preprocessor_for
from contralign.data.records import Item, Record
from contralign.data.views import view_rng

# Views of at most this many pixels a side skip the blur when the preset's ``blur`` is unset
# (SimCLR drops it for CIFAR's 32 px).
SMALL_IMAGE = 32


@runtime_checkable
class PixelSource(Protocol):
    """What image views need of an image tower's preprocessor (``ImagePreprocessor``)."""

    image_size: int

    def pixels(self, items: Sequence[Any]) -> Tensor:
        """``(B, 3, S, S)`` float32 in [0, 1]: the items decoded to the tower's size ``S``."""
        ...

    def scale(self, pixels: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` pixels in [0, 1] -> the tower's input batch (``pixel_values``)."""
        ...


@dataclass(frozen=True)
class ImageView:
    """One view's pipeline (picklable; the kornia modules are built in each process).

    Attributes:
        size: side of the view in pixels; None: ``fraction`` of the tower's input size.
        fraction: the side relative to the tower's size when ``size`` is None.
        scale: range of the crop's area, as a fraction of the image.
        flip: probability of a horizontal flip.
        jitter: (brightness, contrast, saturation, hue) strengths of the colour jitter.
        jitter_p: probability of the colour jitter.
        grayscale: probability of grayscale.
        blur: probability of a Gaussian blur (kernel ~10% of the side, sigma 0.1-2).
        blur_small: blur views of ``SMALL_IMAGE`` px or less too (False: a paper's default
            that drops the blur at CIFAR's size).
        solarize: probability of solarisation at 0.5.
    """

    size: int | None = None
    fraction: float = 1.0
    scale: tuple[float, float] = (0.08, 1.0)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale: float = 0.2
    blur: float = 0.0
    blur_small: bool = True
    solarize: float = 0.0

    def side(self, source: int) -> int:
        """The view's side for a tower whose input side is ``source``."""
        return self.size if self.size is not None else max(1, round(self.fraction * source))

    def blur_for(self, side: int) -> float:
        """The blur probability at ``side`` pixels."""
        return self.blur if self.blur_small or side > SMALL_IMAGE else 0.0


# --- presets ----------------------------------------------------------------------------------


def _blur(blur: float | None, paper: float) -> dict[str, Any]:
    return {"blur": paper, "blur_small": False} if blur is None else {"blur": blur}


def _strength(s: float) -> tuple[float, float, float, float]:
    return (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)


def simclr(size: int | None = None, scale: tuple[float, float] = (0.08, 1.0),
           strength: float = 0.5, blur: float | None = None, views: int = 2
           ) -> tuple[ImageView, ...]:
    """SimCLR's views (arXiv:2002.05709, Appendix A); ``strength`` 0.5 (CIFAR) or 1 (ImageNet)."""
    view = ImageView(size=size, scale=_pair(scale), jitter=_strength(strength), **_blur(blur, 0.5))
    return (view,) * views


def moco_v2(size: int | None = None, scale: tuple[float, float] = (0.2, 1.0),
            strength: float = 0.5, blur: float | None = None, views: int = 2
            ) -> tuple[ImageView, ...]:
    """MoCo v2's views (arXiv:2003.04297): crop 0.2-1, jitter (0.4, 0.4, 0.4, 0.1) (SimCLR's
    strength 0.5), blur 0.5."""
    return simclr(size, scale, strength, blur, views)


def swav(size: int | None = None, local_size: int | None = None, local_crops: int = 6,
         scale: tuple[float, float] = (0.14, 1.0), local_scale: tuple[float, float] = (0.05, 0.14),
         strength: float = 1.0, blur: float | None = None) -> tuple[ImageView, ...]:
    """SwAV's multi-crop (arXiv:2006.09882): 2 global views, then ``local_crops`` local ones."""
    common: dict[str, Any] = {"jitter": _strength(strength), **_blur(blur, 0.5)}
    full = ImageView(size=size, scale=_pair(scale), **common)
    local = ImageView(size=local_size, fraction=96 / 224, scale=_pair(local_scale), **common)
    return (full, full) + (local,) * local_crops


def byol(size: int | None = None, scale: tuple[float, float] = (0.08, 1.0),
         blur: tuple[float, float] | None = None, solarize: tuple[float, float] = (0.0, 0.2)
         ) -> tuple[ImageView, ...]:
    """BYOL's two asymmetric views (arXiv:2006.07733, Table 6): blur 1.0 / 0.1, solarise 0 / 0.2."""
    blurs = (1.0, 0.1) if blur is None else _pair(blur)
    jitter = (0.4, 0.4, 0.2, 0.1)
    return tuple(ImageView(size=size, scale=_pair(scale), jitter=jitter, blur=b,
                           blur_small=blur is not None, solarize=s)
                 for b, s in zip(blurs, _pair(solarize), strict=True))


# Explicit registry: preset name -> the function that makes its views.
IMAGE_VIEWS: dict[str, Any] = {"simclr": simclr, "moco-v2": moco_v2, "swav": swav, "byol": byol}


def make_image_views(name: str, **params: Any) -> tuple[ImageView, ...]:
    """The views of preset ``name`` with ``params``.

    Raises:
        ValueError: an unknown preset or parameter, or a bad value (naming the preset and key).
    """
    if name not in IMAGE_VIEWS:
        raise ValueError(f"unknown image view {name!r}; choose from {', '.join(IMAGE_VIEWS)}")
    import inspect

    accepted = list(inspect.signature(IMAGE_VIEWS[name]).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"view {name}: unknown parameter(s) {', '.join(unknown)} "
                         f"(accepted: {', '.join(accepted)})")
    for key, value in params.items():
        _check(name, key, value)
    try:
        views: tuple[ImageView, ...] = IMAGE_VIEWS[name](**params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"view {name}: {err}") from None
    return views


def build_image_views(configs: Sequence[dict[str, Any]]) -> tuple[ImageView, ...]:
    """A config's ``views: [{name: simclr, size: 32}, …]`` -> every view, presets in order.

    Raises:
        ValueError: an unknown preset or parameter (the message names it).
    """
    return tuple(view for config in configs for view in make_image_views(
        str(config.get("name")), **{k: v for k, v in config.items() if k != "name"}))


def is_image_view(name: object) -> bool:
    """Whether ``name`` names an image view preset (else a text view)."""
    return name in IMAGE_VIEWS


def _pair(value: Any) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"expected two numbers, got {value!r}")
    return values[0], values[1]


def _check(view: str, key: str, value: Any) -> None:
    """Bounds of a preset parameter, named in the message."""
    def bad(what: str) -> ValueError:
        return ValueError(f"view {view}: {key} must be {what}, got {value!r}")

    def number(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)

    match key:
        case "size" | "local_size":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 8):
                raise bad("an integer of at least 8 (pixels), or null (the tower's size)")
        case "views" | "local_crops":
            least = 1 if key == "views" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise bad(f"an integer of at least {least}")
        case "strength":
            if not number(value) or value < 0:
                raise bad("a number of at least 0")
        case "scale" | "local_scale":
            if not (isinstance(value, list | tuple) and len(value) == 2 and all(map(number, value))
                    and 0 < value[0] <= value[1] <= 1):
                raise bad("[low, high] with 0 < low <= high <= 1")
        case "blur" | "solarize" if view == "byol":
            if value is not None and not (isinstance(value, list | tuple) and len(value) == 2
                                          and all(number(v) and 0 <= v <= 1 for v in value)):
                raise bad("two probabilities [view 1, view 2]")
        case "blur":
            if value is not None and (not number(value) or not 0 <= value <= 1):
                raise bad("a probability in [0, 1], or null (the paper's)")


# --- applying views ---------------------------------------------------------------------------


# The colour jitter's factors' keys in the order of ``orders``' indices, and the factor of each
# that leaves an image as it is.
JITTER_FACTORS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
JITTER_NEUTRAL = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class _ColourJitter:
    """The colour jitter's step in a pipeline: its probability, as kornia's modules hold theirs
    (``_jitter`` applies it)."""

    p: float


@functools.lru_cache(maxsize=32)
def _pipeline(view: ImageView, side: int) -> dict[str, Any]:
    """The kornia modules of ``view`` at ``side`` pixels by step, in the order they apply (one
    set per process: kornia is imported here, in the DataLoader worker that uses it; the colour
    jitter a ``_ColourJitter``). A step that never applies is left out."""
    import kornia.augmentation as K

    kernel = max(3, int(0.1 * side) // 2 * 2 + 1)  # odd, ~10% of the side (23 at 224 px)
    steps: dict[str, Any] = {
        "flip": K.RandomHorizontalFlip(p=view.flip),
        "jitter": _ColourJitter(p=view.jitter_p),
        "grayscale": K.RandomGrayscale(p=view.grayscale),
        "blur": K.RandomGaussianBlur((kernel, kernel), draws.SIGMA, p=view.blur_for(side)),
        "solarize": K.RandomSolarize(thresholds=0.0, additions=0.0, p=view.solarize)}
    crop = K.RandomResizedCrop((side, side), scale=view.scale, ratio=draws.ASPECT,
                               cropping_mode="resample")
    return {"crop": crop, **{name: step for name, step in steps.items() if step.p > 0}}


def augment(pixels: Tensor, view: ImageView, seeds: Sequence[int]) -> Tensor:
    """One view of each image: ``(B, 3, S, S)`` in [0, 1] -> ``(B, 3, s, s)`` in [0, 1].

    Image ``i``'s parameters are drawn from uniforms seeded by ``seeds[i]`` (``view_draws``;
    torch's own random state is not touched), so an image's view depends only on it and its
    seed, not on the rest of the batch.

    Raises:
        ValueError: as many seeds as images are needed.
    """
    if len(seeds) != pixels.shape[0]:
        raise ValueError(f"augment: {pixels.shape[0]} images but {len(seeds)} seeds")
    side = view.side(pixels.shape[-1])
    u = draws.uniforms(seeds)  # (B, UNIFORMS)
    out = pixels
    for name, module in _pipeline(view, side).items():
        if name == "jitter":
            out = _jitter(out, *draws.jitter_params(u, view))
            continue
        params = (draws.crop_params(u, view, pixels.shape[-1], side) if name == "crop" else
                  draws.STEPS[name](u, module.p))
        out = module(out, params=_shaped(params, out.shape))
    return out.clamp_(0.0, 1.0)


def _jitter(x: Tensor, params: dict[str, Tensor], orders: Tensor) -> Tensor:
    """kornia's ``ColorJitter`` with each image's own order of its four adjustments (``orders``
    ``(B, 4)`` indices into brightness, contrast, saturation, hue).

    The module takes one order per call, and grouping the images by the order they drew made up
    to 24 calls of 4 adjustments (0.028 s a view of 256 28-px images on 2 cores). Here each
    position of the order runs each adjustment once on the images that drew it there: at most
    16 batched calls (0.011 s) of the ``kornia.enhance`` functions the module applies, on the
    images its gate selects, clamped to [0, 1] before and after; a step whose images all drew
    its neutral factor is skipped, as the module skips it. Every adjustment acts on each image
    alone, so the result equals the module's, bit for bit (tested).
    """
    from kornia import enhance

    def hue(image: Tensor, turns: Tensor) -> Tensor:
        return enhance.adjust_hue(image, turns * 2 * math.pi)

    steps = (enhance.adjust_brightness_accumulative, enhance.adjust_contrast_with_mean_subtraction,
             enhance.adjust_saturation_with_gray_subtraction, hue)
    factors = torch.stack([params[key] for key in JITTER_FACTORS], dim=1)  # (B, 4)
    chosen = (params["batch_prob"] > 0.5).nonzero().squeeze(1)
    out = x.clone()
    y, factors, orders = x[chosen].clamp(0.0, 1.0), factors[chosen], orders[chosen]
    for position in range(4):
        for step, adjust in enumerate(steps):
            rows = (orders[:, position] == step).nonzero().squeeze(1)
            factor = factors[rows, step]
            if (factor != JITTER_NEUTRAL[step]).any():
                y[rows] = adjust(y[rows], factor)
    out[chosen] = y.clamp(0.0, 1.0)
    return out


def _shaped(params: dict[str, Tensor], shape: torch.Size) -> dict[str, Tensor]:
    """``params`` with the input shape kornia records beside them."""
    return {**params, "forward_input_shape": torch.tensor(list(shape), dtype=torch.long)}


# --- the views hook ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageViews:
    """The views hook for images (a ``data.BatchExtras``): as ``TextViews``, with image views.

    ``{"views": [V preprocessed views]}``, and unless ``views_only``, ``anchor`` and
    ``positive`` replaced by views 0 and 1. View 0 is drawn from the anchor and the others from
    the positive (the anchor when there is none); with ``views_only`` every view from the
    positive. Row ``i`` of the batch draws view ``v``'s parameters from
    ``view_rng(seed, epoch, batch, i, v)``, whichever rows this process preprocesses. Each view
    is scaled by the preprocessor of the tower that embeds it (view 1, or every view with
    ``views_only``, the positive's; the others the anchor's), which must be a ``PixelSource``.
    """

    views: tuple[ImageView, ...]
    views_only: bool = False

    def __call__(self, records: Sequence[Record], preprocess: Preprocess, position: Position,
                 rows: slice | None) -> dict[str, Any]:
        start, stop = (0, len(records)) if rows is None else (rows.start, rows.stop)
        mine = records[start:stop]
        sources = {"anchor": caption_items(mine, "anchor", [r.anchor for r in mine], position),
                   "positive": caption_items(mine, "positive", [
                       r.positive if r.positive is not None else r.anchor for r in mine],
                       position)}
        pixels: dict[str, Tensor] = {}
        preprocessed = []
        for v, view in enumerate(self.views):
            source = "anchor" if v == 0 and not self.views_only else "positive"
            if source not in pixels:
                pixels[source] = _source(preprocess, source).pixels(_images(sources[source],
                                                                            mine))
            seeds = [view_rng(*position, i, v).getrandbits(63) for i in range(start, stop)]
            role = "positive" if self.views_only or v == 1 else "anchor"
            preprocessed.append(_source(preprocess, role).scale(
                augment(pixels[source], view, seeds)))
        out: dict[str, Any] = {"views": preprocessed}
        if not self.views_only:
            out["anchor"], out["positive"] = preprocessed[0], preprocessed[1]
        return out


def _source(preprocess: Preprocess, role: str) -> PixelSource:
    preprocessor = preprocessor_for(preprocess, role)
    if not isinstance(preprocessor, PixelSource):
        raise ValueError(f"image views need an image tower for the {role} role, got a "
                         f"{type(preprocessor).__name__}")
    return preprocessor


def _images(items: Sequence[Item], records: Sequence[Record]) -> list[Item]:
    for item, record in zip(items, records, strict=True):
        if isinstance(item, str):
            raise ValueError(f"image views need images, but the record at line {record.line} "
                             "holds a text")
    return list(items)
