"""The batched draws of image-view parameters against torchvision's crop written as a loop."""

from __future__ import annotations

import math

import pytest
import torch

from contralign.data import view_draws as draws
from contralign.data.image_views import ImageView


def naive_crop(u: list[float], height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with its random numbers taken from ``u``."""
    for t in range(draws.TRIES):
        area = height * width * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[2 * t + 1]
        aspect = math.exp(log_ratio)
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            place = 2 * draws.TRIES
            return (math.floor(u[place] * (width - w + 1)),
                    math.floor(u[place + 1] * (height - h + 1)), w, h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0), (0.05, 0.14), (0.9, 1.0)])
def test_crop_boxes_equal_torchvisions_loop(scale):
    u = draws.uniforms(range(2000))
    boxes = draws.crop_boxes(u, 32, 32, scale, draws.ASPECT)
    expected = [naive_crop(row.tolist(), 32, 32, scale, draws.ASPECT) for row in u]
    assert boxes.tolist() == [list(box) for box in expected]
    x, y, w, h = boxes.unbind(1)
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 32).all() and (y + h <= 32).all()


def test_crop_falls_back_to_the_centred_box_when_no_try_fits():
    u = torch.zeros(1, draws.UNIFORMS, dtype=torch.float64)
    u[0, 0 : 2 * draws.TRIES : 2] = 1.0  # every try wants the whole area ...
    u[0, 1 : 2 * draws.TRIES : 2] = 1.0  # ... at aspect 4/3: too wide for the square
    assert draws.crop_boxes(u, 30, 40, (1.0, 1.0), draws.ASPECT).tolist() == [[0, 0, 40, 30]]
    assert draws.crop_boxes(u, 30, 60, (1.0, 1.0), draws.ASPECT).tolist() == [[10, 0, 40, 30]]
    assert naive_crop(u[0].tolist(), 30, 60, (1.0, 1.0), draws.ASPECT) == (10, 0, 40, 30)


def test_uniforms_are_fixed_by_each_seed_and_leave_torch_alone():
    before = torch.random.get_rng_state()
    block = draws.uniforms([5, 7, 5])
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(block[0], block[2]) and not torch.equal(block[0], block[1])
    assert torch.equal(draws.uniforms([7])[0], block[1])


def test_the_other_steps_draw_the_papers_ranges_and_rates():
    u = draws.uniforms(range(20000))
    view = ImageView(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8)
    params, orders = draws.jitter_params(u, view)
    for key in ("brightness_factor", "contrast_factor", "saturation_factor"):
        assert 0.6 <= params[key].min() < 0.61 and 1.39 < params[key].max() < 1.4
    assert -0.1 <= params["hue_factor"].min() < -0.099 and 0.099 < params["hue_factor"].max()
    assert abs(params["batch_prob"].mean().item() - 0.8) < 0.01
    assert (orders.sort(dim=1).values == torch.arange(4)).all()  # each row a permutation
    assert len(orders.unique(dim=0)) == 24
    strong = draws.jitter_params(u, ImageView(jitter=(1.6, 1.6, 1.6, 0.4)))[0]
    assert strong["brightness_factor"].min() == 0.0  # max(0, 1 - s), as torchvision
    blur = draws.blur_params(u, 0.5)
    assert 0.1 <= blur["sigma"].min() and blur["sigma"].max() < 2.0
    for step, p in (("flip", 0.5), ("grayscale", 0.2), ("blur", 0.5), ("solarize", 0.2)):
        assert abs(draws.STEPS[step](u, p)["batch_prob"].mean().item() - p) < 0.01
    # The steps use different uniforms: flips and grayscale are not correlated.
    flip, gray = draws.STEPS["flip"](u, 0.5)["batch_prob"], draws.STEPS["grayscale"](u, 0.5)[
        "batch_prob"]
    assert abs((flip * gray).mean().item() - 0.25) < 0.015
