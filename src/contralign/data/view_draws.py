"""The random parameters of image views, drawn for a whole batch at once.

Each image's parameters come from a fixed row of uniforms drawn by a generator seeded with the
image's own seed (``uniforms``), so a view depends only on its image and its seed; everything
after that is arithmetic on the ``(B, K)`` block. Drawing kornia's parameters image by image
(``forward_parameters`` per module per image) cost ~0.45 s per view of 256 images on one core
— as long as the ResNet's step at width 8 — this costs a few milliseconds.

The distributions are the papers' (torchvision's, which their code uses):

* crop (``RandomResizedCrop.get_params``): up to ten tries of an area drawn uniformly from
  ``scale`` of the image's and a log-uniform aspect ratio in ``ratio``; the first box that fits
  (sides rounded) is placed uniformly; if none fits, the largest centred box within ``ratio``.
* flip, grayscale, blur, solarisation: applied with their probabilities; blur sigma uniform in
  [0.1, 2]; solarisation at 0.5.
* colour jitter (applied with ``jitter_p``): brightness, contrast and saturation factors
  uniform in [max(0, 1 - s), 1 + s], hue shift uniform in [-h, h], the four adjustments in a
  random order per image.

The dictionaries are in the layout of kornia's ``forward_parameters``, to be passed as
``params=`` to the module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from contralign.data.image_views import ImageView

TRIES = 10  # torchvision's crop attempts
# Columns of each image's row of uniforms.
_CROP = slice(0, 2 * TRIES)  # (area, log-ratio) per try
_PLACE = slice(2 * TRIES, 2 * TRIES + 2)  # (x, y) of the box
_FLIP, _JITTER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = range(2 * TRIES + 2, 2 * TRIES + 8)
_FACTORS = slice(2 * TRIES + 8, 2 * TRIES + 12)  # brightness, contrast, saturation, hue
_ORDER = slice(2 * TRIES + 12, 2 * TRIES + 16)  # argsort gives the jitter's order
UNIFORMS = 2 * TRIES + 16
SIGMA = (0.1, 2.0)
ASPECT = (3.0 / 4.0, 4.0 / 3.0)  # the crop's aspect-ratio range


def uniforms(seeds: Sequence[int]) -> Tensor:
    """``(B, UNIFORMS)`` float64 in [0, 1): row ``i`` from a generator seeded with ``seeds[i]``
    (torch's global random state is not touched)."""
    generator = torch.Generator()
    rows = torch.empty(len(seeds), UNIFORMS, dtype=torch.float64)
    for i, seed in enumerate(seeds):
        generator.manual_seed(seed)
        rows[i] = torch.rand(UNIFORMS, generator=generator, dtype=torch.float64)
    return rows


def crop_boxes(u: Tensor, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> Tensor:
    """``(B, 4)`` integer boxes ``(x, y, w, h)`` of torchvision's random resized crop, from the
    uniforms ``u`` ``(B, UNIFORMS)`` (see the module's docstring)."""
    tries = u[:, _CROP].reshape(-1, TRIES, 2)  # (B, T, 2)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * tries[..., 1])
    w = torch.sqrt(area * aspect).round()  # (B, T)
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # No try fits: the largest centred box within the ratio range (torchvision's fallback).
    if width / height < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    none = ~fits.any(dim=1)
    w, h = torch.where(none, float(fw), w), torch.where(none, float(fh), h)
    x = torch.floor(u[:, _PLACE.start] * (width - w + 1))
    y = torch.floor(u[:, _PLACE.start + 1] * (height - h + 1))
    x = torch.where(none, float((width - fw) // 2), x)
    y = torch.where(none, float((height - fh) // 2), y)
    return torch.stack([x, y, w, h], dim=1).long()


def crop_params(u: Tensor, view: ImageView, source: int, side: int) -> dict[str, Tensor]:
    """kornia ``RandomResizedCrop`` parameters: boxes of a ``source``-px square resized to
    ``side`` px."""
    x, y, w, h = crop_boxes(u, source, source, view.scale, ASPECT).float().unbind(1)
    src = torch.stack([torch.stack([x, y], 1), torch.stack([x + w - 1, y], 1),
                       torch.stack([x + w - 1, y + h - 1], 1), torch.stack([x, y + h - 1], 1)],
                      dim=1)  # (B, 4, 2) corners clockwise from the top left
    corners = torch.tensor([[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1]],
                           dtype=torch.float32)
    batch = u.shape[0]
    return {"src": src, "dst": corners.expand(batch, 4, 2).clone(),
            "input_size": torch.tensor([[source, source]]).expand(batch, 2).clone(),
            "output_size": torch.tensor([[side, side]]).expand(batch, 2).clone(),
            "batch_prob": torch.ones(batch)}


def jitter_params(u: Tensor, view: ImageView) -> tuple[dict[str, Tensor], Tensor]:
    """kornia ``ColorJitter`` parameters and each image's order of the four adjustments
    ``(B, 4)``."""
    factors = (2.0 * u[:, _FACTORS] - 1.0).float()  # (B, 4) in [-1, 1)
    b, c, s, h = view.jitter
    params = {"brightness_factor": (1.0 + b * factors[:, 0]).clamp_min(0.0),
              "contrast_factor": (1.0 + c * factors[:, 1]).clamp_min(0.0),
              "saturation_factor": (1.0 + s * factors[:, 2]).clamp_min(0.0),
              "hue_factor": h * factors[:, 3],
              "batch_prob": applied(u, _JITTER, view.jitter_p)}
    return params, u[:, _ORDER].argsort(dim=1)


def applied(u: Tensor, column: int, p: float) -> Tensor:
    """``(B,)`` 1.0 where the step applies to the image (probability ``p``), else 0.0."""
    return (u[:, column] < p).float()


def flip_params(u: Tensor, p: float) -> dict[str, Tensor]:
    """kornia ``RandomHorizontalFlip`` parameters."""
    return {"batch_prob": applied(u, _FLIP, p)}


def grayscale_params(u: Tensor, p: float) -> dict[str, Tensor]:
    """kornia ``RandomGrayscale`` parameters."""
    return {"batch_prob": applied(u, _GRAY, p)}


def blur_params(u: Tensor, p: float) -> dict[str, Tensor]:
    """kornia ``RandomGaussianBlur`` parameters: sigma uniform in ``SIGMA``."""
    return {"sigma": (SIGMA[0] + (SIGMA[1] - SIGMA[0]) * u[:, _SIGMA]).float(),
            "batch_prob": applied(u, _BLUR, p)}


def solarize_params(u: Tensor, p: float) -> dict[str, Tensor]:
    """kornia ``RandomSolarize`` parameters: threshold 0.5, no brightness addition."""
    batch = u.shape[0]
    return {"thresholds": torch.full((batch,), 0.5), "additions": torch.zeros(batch),
            "batch_prob": applied(u, _SOLARIZE, p)}


# The steps whose parameters are one probability's draw (by ``_pipeline``'s step names).
STEPS = {"flip": flip_params, "grayscale": grayscale_params, "blur": blur_params,
         "solarize": solarize_params}
