"""SimCLR and MoCo v2 training steps of contralign against lightly's, on real CIFAR-10 views.

One fixed batch of 16 CIFAR-10 images, two views each drawn by contralign's own ``augment``
(the recipes' ``simclr`` / ``moco-v2`` views), goes through the task the bundled recipes build
(``simclr-images`` / ``moco-v2-images``: their head, objective, views and input size, with the
ResNet at width 8). The reference is a second model of the same weights: contralign's
``CifarResNet`` with the state dict copied in, and lightly's heads (``load_state_dict(
strict=True)`` also checks that our head is built as lightly's is), driven the way lightly's
examples drive them: ``NTXentLoss``, ``NTXentLoss`` with a memory bank,
``deactivate_requires_grad`` and ``update_momentum``.

Semantic differences from lightly (1.6), found by reading its source; the tests check what is
equal and pin these down:

* **SimCLR's head.** lightly's ``SimCLRProjectionHead(batch_norm=True)`` is Linear (no bias)
  -> BN -> ReLU -> Linear (no bias) -> BN: its output layer is batch-normalised too (as the
  authors' TF code and SimCLR v2). Ours, and the recipe's, is the v1 paper's ``g`` with
  BatchNorm on the hidden layer only: Linear (no bias) -> BN -> ReLU -> Linear (bias). The
  SimCLR parity builds that head with lightly's generic ``ProjectionHead``; MoCo v2's head (no
  BatchNorm) is lightly's ``MoCoProjectionHead`` exactly.
* **Empty queue.** lightly's ``MemoryBankModule`` starts full of random unit vectors, which
  serve as negatives from the first step; contralign's ``KeyQueue`` starts empty and serves only
  the keys it has been given (the first step's MoCo loss is 0). The tests pre-fill our queue
  with lightly's initial bank, so both score the same negatives.
* **Enqueue at the end of the queue.** When a batch does not fit before the end, lightly writes
  the part that fits, drops the rest of the batch and restarts at slot 0; contralign wraps
  around and writes every key (the oldest are overwritten). With a queue size that is a
  multiple of the batch size (the recipe's 4,096 and 256, and this test's 16) both agree.
* **When the momentum update happens.** lightly's example updates the key tower at the start
  of each step, contralign's trainer after each optimiser step (``task.after_step``): the same
  sequence of weights (the first update of lightly's loop is a no-op).
* **Key-tower BatchNorm statistics.** ``update_momentum`` moves parameters only; the key
  tower's running statistics are the ones its own forwards left. contralign's
  ``MomentumEncoder.update`` copies every buffer (running means and variances) from the online
  tower. In training mode BatchNorm normalises by the batch, so the keys, the loss and the
  gradients do not depend on this; an evaluation of the key tower would.
* **When keys are enqueued.** lightly enqueues when the query requires a gradient; contralign
  when the objective is in training mode.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from contralign.data.image_views import ImageView, augment, build_image_views
from contralign.encoders.resnet import CifarResNet
from contralign.training.build import build_model, build_task
from contralign.training.config import TrainConfig
from contralign.training.recipes import find_config
from contralign.training.task import ContrastiveTask

pytestmark = [pytest.mark.reference, pytest.mark.usefixtures("one_thread")]

# Skip only when the reference libraries are missing (the default env); any other import
# error in them is a failure.
for _module in ("torchvision", "lightly"):
    pytest.importorskip(_module, reason=f"lightly parity needs {_module} (.venv-ref)")

from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules.heads import (  # noqa: E402
    BYOLPredictionHead,
    MoCoProjectionHead,
    ProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
)
from lightly.models.modules.memory_bank import MemoryBankModule  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402

BATCH = 16
WIDTH = 8  # resnet18-cifar-w8: 64-d features
RTOL, ATOL = 1e-5, 1e-6



def recipe_task(name: str, data: Path, head_batch_norm: bool | None = None
                ) -> tuple[ContrastiveTask, tuple[ImageView, ...]]:
    """The task ``contralign train <name>`` builds, with the ResNet at width 8 and no dev
    evaluation (and the head's BatchNorm as given), and the recipe's image views."""
    raw = yaml.safe_load(find_config(name).read_text(encoding="utf-8"))
    raw.pop("eval", None)
    if head_batch_norm is not None:
        raw["model"]["head"]["batch_norm"] = head_batch_norm
    raw["model"]["name"] = f"resnet18-cifar-w{WIDTH}"
    raw["data"]["path"] = str(data)
    # Eager, as lightly's step is: the compiled path is compared with the eager one by
    # contralign check (tests/test_compile.py).
    raw["train"]["compile"] = False
    config = TrainConfig.model_validate(raw)
    torch.manual_seed(0)
    task = build_task(config, build_model(config))
    task.train()
    return task, build_image_views(raw["views"])


def view_batch(task: ContrastiveTask, data: Path, views: tuple[ImageView, ...]
               ) -> dict[str, Any]:
    """Two views of 16 CIFAR-10 images, scaled as the tower expects, as the trainer's batch."""
    tower = task.model.anchor_tower
    with np.load(data) as arrays:
        images = list(arrays["images"][:BATCH])
    pixels = tower.preprocessor.pixels(images)  # (16, 3, S, S) in [0, 1], S the tower's
    scaled = [tower.preprocessor.scale(augment(pixels, view, [1000 * v + i for i in range(BATCH)]))
              for v, view in enumerate(views)]
    ids = torch.arange(BATCH)
    return {"anchor": scaled[0], "positive": scaled[1], "views": scaled,
            "anchor_ids": ids, "positive_ids": ids}


def reference_backbone(task: ContrastiveTask) -> CifarResNet:
    """A second ResNet with the online tower's weights and buffers."""
    backbone = CifarResNet(WIDTH)
    backbone.load_state_dict(task.model.anchor_tower.backbone.state_dict())
    backbone.train()
    return backbone


def assert_same_gradients(ours: dict[str, nn.Parameter], theirs: dict[str, nn.Parameter]
                          ) -> float:
    """Every parameter has a gradient on both sides, and they agree to ``RTOL`` of the
    gradient's largest entry (float32 sums through BatchNorm in another order differ by about
    1e-6 of the scale, more than that of the smallest entries); the worst such ratio."""
    assert ours.keys() == theirs.keys()
    worst = 0.0
    for name, parameter in ours.items():
        expected = theirs[name].grad
        assert parameter.grad is not None and expected is not None, name
        scale = float(expected.abs().max())
        assert scale > 0, name  # every parameter is reached
        ratio = float((parameter.grad - expected).abs().max()) / scale
        assert ratio <= RTOL, (name, ratio)
        worst = max(worst, ratio)
    return worst


def online_parameters(task: ContrastiveTask) -> dict[str, nn.Parameter]:
    """The trained parameters by reference name: ``backbone.*`` and ``head.*``."""
    backbone = {f"backbone.{k}": p for k, p in task.model.anchor_tower.backbone.named_parameters()}
    head = {f"head.{k}": p for k, p in task.model.heads["tower"].named_parameters()}
    return {**backbone, **head}


def named(backbone: nn.Module, head: nn.Module) -> dict[str, nn.Parameter]:
    return {**{f"backbone.{k}": p for k, p in backbone.named_parameters()},
            **{f"head.{k}": p for k, p in head.named_parameters()}}


def test_simclr_step_matches_lightly_nt_xent(tiny_cifar: Path) -> None:
    task, views = recipe_task("simclr-images", tiny_cifar)
    batch = view_batch(task, tiny_cifar, views)
    backbone = reference_backbone(task)
    # lightly's SimCLRProjectionHead ends in BatchNorm (see the module docstring); its generic
    # ProjectionHead builds the recipe's Linear-BN-ReLU-Linear.
    head = ProjectionHead([(backbone.width, 512, nn.BatchNorm1d(512), nn.ReLU()),
                           (512, 128, None, None)])
    head.load_state_dict(task.model.heads["tower"].state_dict(), strict=True)
    head.train()

    ours = task(batch)["loss"]
    ours.backward()
    # lightly's example: out0 = model(x0), out1 = model(x1), loss = NTXentLoss(...)(out0, out1)
    out0 = head(backbone(batch["anchor"]["pixel_values"]))  # (16, 128)
    out1 = head(backbone(batch["positive"]["pixel_values"]))
    temperature = task.objective.temperature  # the recipe's (0.2)
    assert isinstance(temperature, float)
    theirs = NTXentLoss(temperature=temperature)(out0, out1)
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=0.0)
    assert 2.0 < ours.item() < 5.0  # near log(31) for a fresh network: a real loss, not 0
    assert_same_gradients(online_parameters(task), named(backbone, head))
    # Both saw the two views in two forwards: the same BatchNorm running statistics.
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(task.model.anchor_tower.backbone.state_dict()[key], value,
                                   rtol=RTOL, atol=ATOL, msg=key)


def test_lightly_simclr_head_ends_in_batchnorm_and_ours_does_not(tiny_cifar: Path) -> None:
    ours: Any = recipe_task("simclr-images", tiny_cifar)[0].model.heads["tower"]
    theirs = SimCLRProjectionHead(64, 512, 128, batch_norm=True)
    assert [type(m).__name__ for m in ours.layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [type(m).__name__ for m in theirs.layers] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert ours.layers[-1].bias is not None and theirs.layers[3].bias is None


class LightlyMoCo(nn.Module):
    """MoCo v2 as lightly's example builds it: online backbone and head, their deep copies with
    gradients off, and ``NTXentLoss`` with a memory bank of ``queue_size`` keys."""

    def __init__(self, backbone: nn.Module, head: nn.Module, queue_size: int, dim: int,
                 temperature: float) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.backbone_momentum = copy.deepcopy(backbone)
        self.head_momentum = copy.deepcopy(head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue_size, dim))

    def loss(self, query_pixels: Tensor, key_pixels: Tensor) -> Tensor:
        query = self.head(self.backbone(query_pixels))
        key = self.head_momentum(self.backbone_momentum(key_pixels)).detach()
        return self.criterion(query, key)

    def update(self, momentum: float) -> None:
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.head, self.head_momentum, m=momentum)


def test_moco_v2_step_matches_lightly_memory_bank_and_momentum(tiny_cifar: Path) -> None:
    # MoCo v2's head (lightly's MoCoProjectionHead) has no BatchNorm; the recipe's has (a MoCo
    # v3 trait), and with BatchNorm lightly's head also normalises its output, unlike ours
    task, views = recipe_task("moco-v2-images", tiny_cifar, head_batch_norm=False)
    # lightly's pieces normalise the whole batch; the recipe's shuffle-BN (bn_splits 4) is
    # tested against the towers on each group in tests/test_shuffle_bn.py
    task.bn_splits = 1
    # In float64: at the recipe's T 0.07 float32 sums in another order already differ by 1.2e-5
    # of the largest gradient entry (the stem); float64 shows the algorithms agree
    task.double()
    objective: Any = task.objective
    queue, temperature = objective.queue, objective.temperature
    momentum = task.model.towers["momentum"].momentum
    assert queue.size % BATCH == 0  # lightly's bank drops keys past its end (see above)
    batch = view_batch(task, tiny_cifar, views)
    for role in ("anchor", "positive"):
        batch[role] = {k: v.double() for k, v in batch[role].items()}
    backbone = reference_backbone(task).double()
    head = MoCoProjectionHead(backbone.width, 512, 128, batch_norm=False).double()
    head.load_state_dict(task.model.heads["tower"].state_dict(), strict=True)
    torch.manual_seed(1)  # lightly's bank: 4,096 random unit vectors
    reference = LightlyMoCo(backbone, head, queue.size, queue.dim, temperature).train().double()
    bank = reference.criterion.memory_bank
    queue.enqueue(bank.bank.clone())  # the same negatives, in the same slots; pointer at 0
    assert len(queue) == queue.size and int(queue.pointer) == int(bank.bank_ptr) == 0

    ours = task(batch)["loss"]
    ours.backward()
    theirs = reference.loss(batch["anchor"]["pixel_values"], batch["positive"]["pixel_values"])
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=0.0)
    # 4,096 negatives: not the exact 0 of an empty queue (the recipe's T 0.07 makes it small)
    assert ours.item() > 1e-3
    assert_same_gradients(online_parameters(task), named(backbone, head))
    key_tower = task.model.towers["momentum"].encoder.backbone
    assert not any(p.grad is not None for p in key_tower.parameters())
    # The queue after the step: this batch's normalised keys in slots 0-15, pointer at 16.
    torch.testing.assert_close(queue.keys, bank.bank, rtol=RTOL, atol=ATOL)
    assert int(queue.pointer) == int(bank.bank_ptr) == BATCH

    # One identical SGD step on both, then the momentum update.
    for parameters in (online_parameters(task), named(backbone, head)):
        with torch.no_grad():
            for parameter in parameters.values():
                parameter.sub_(0.5 * parameter.grad)  # type: ignore[operator]
    task.after_step()
    reference.update(momentum)
    ours_keys = named(key_tower, task.model.heads["momentum"].encoder)
    theirs_keys = named(reference.backbone_momentum, reference.head_momentum)
    moved = 0.0
    for name, parameter in ours_keys.items():
        torch.testing.assert_close(parameter, theirs_keys[name], rtol=RTOL, atol=ATOL, msg=name)
        online = online_parameters(task)[name].detach()
        moved = max(moved, float((parameter - online).abs().max()))
    assert moved > 1e-4  # the key tower moved by 1 % of the step, not onto the online tower
    # The one difference: our key tower's BatchNorm statistics are the online tower's.
    online_buffers = dict(task.model.anchor_tower.backbone.named_buffers())
    for name, buffer in key_tower.named_buffers():
        torch.testing.assert_close(buffer, online_buffers[name], rtol=0.0, atol=0.0)


def test_queue_and_memory_bank_agree_until_a_batch_overruns_the_end() -> None:
    from contralign.objectives.momentum import KeyQueue

    torch.manual_seed(2)
    bank = MemoryBankModule(size=(24, 4), feature_dim_first=False)
    queue = KeyQueue(4, 24)
    queue.enqueue(bank.bank.clone())
    batches = torch.nn.functional.normalize(torch.randn(2, 16, 4), dim=-1)
    bank(batches[0], update=True)
    queue.enqueue(batches[0])
    torch.testing.assert_close(queue.keys, bank.bank)  # slots 0-15, pointer 16 on both
    assert int(queue.pointer) == int(bank.bank_ptr) == 16
    bank(batches[1], update=True)
    queue.enqueue(batches[1])
    # 8 slots were left: both write the batch's first 8 keys into slots 16-23; lightly drops
    # the other 8 and restarts at 0, contralign writes them into slots 0-7 and points at 8.
    torch.testing.assert_close(queue.keys[8:], bank.bank[8:])
    torch.testing.assert_close(queue.keys[:8], batches[1][8:])
    torch.testing.assert_close(bank.bank[:8], batches[0][:8])
    assert (int(queue.pointer), int(bank.bank_ptr)) == (8, 0)


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_simsiam_and_byol_losses_match_lightlys_heads_and_loss(name: str) -> None:
    """Our objective's predictor loads lightly's prediction head (same layers) and gives the
    loss of lightly's examples: SimSiam ``(D(p0, z1) + D(p1, z0)) / 2`` on detached z, BYOL one
    direction of ``D(p0, z1)`` (our trainer gives each step one; the example sums both)."""
    from contralign.objectives import build_objective
    from contralign.objectives.inputs import Embedded

    torch.manual_seed(0)
    z0, z1 = torch.randn(16, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    ours = build_objective(name, {"hidden": 8}, dim=32)
    theirs = (SimSiamPredictionHead if name == "simsiam" else BYOLPredictionHead)(32, 8, 32)
    theirs.load_state_dict({key.replace("predictor.", ""): value
                            for key, value in ours.state_dict().items()}, strict=True)
    criterion = NegativeCosineSimilarity()
    loss = ours(Embedded(z0, z1))
    p0, p1 = theirs(z0), theirs(z1)
    expected = (0.5 * (criterion(p0, z1.detach()) + criterion(p1, z0.detach()))
                if name == "simsiam" else criterion(p0, z1.detach()))
    inputs = [z0, z1, *ours.parameters()]
    ours_grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    their_grads = torch.autograd.grad(expected, [z0, z1, *theirs.parameters()],
                                      allow_unused=True)
    torch.testing.assert_close(loss, expected)
    for a, b in zip(ours_grads, their_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)

