"""Training parity of contralign's ``clip`` objective on two towers against open_clip's
``ClipLoss``.

Fixed features, trained heads: the first ``--train-per-class`` images of each of the five classes
of ``../shared/data/images/cifar10-part-a.npz`` and their captions (the ``lit`` recipe's eight
templates filled with the class name: 40 texts) are embedded once by the locked towers of the
``lit`` recipe (EfficientNet-Lite0 at 224 px: 1280-d; all-MiniLM-L6-v2: 384-d), through a fresh
``FeatureCache`` (its ``features`` call on raw items, as a cache miss in training). Two sides
then train a linear head on each side (1280 → 384 and 384 → 384, no bias) and the learned logit
scale, from the same initial weights, on the same batches, for ``--steps`` steps:

* **contralign**: the model, task, optimiser and schedule that a ``lit`` config (both towers
  locked, ``objective: clip``, temperature 0.07 learned) builds (``build_model``,
  ``build_task``, ``build_optimizer``, ``build_scheduler``): the recipe projects only the image
  features, into the text tower's own space; here the text tower gets a 384-d head too, so that
  both heads train. Each step is the trainer's own ``training.loop._step`` (task forward,
  backward, clipping, AdamW) on a batch of raw items and their item ids, as ``fit``'s batches
  carry them. The locked towers' ``FeatureCache``s are filled with the stored features before
  training (through ``FeatureCache.features`` with a stand-in tower that serves them), so every
  step finds its rows in the cache, as every epoch after the first does in ``fit``.
* **open_clip**: ``open_clip.loss.ClipLoss`` on ``F.normalize(head(features))`` of each side
  (as ``CLIP.encode_image/encode_text(normalize=True)``), with the logit scale as open_clip's
  CLIP models keep it (a parameter initialised to ``log(1/0.07)``, passed as ``.exp()``) and as
  ``open_clip_train`` clamps it (in place to ``[0, log 100]`` after each optimiser step); AdamW
  parameter groups by ``open_clip_train``'s rule (no weight decay on 1-d parameters, biases and
  the logit scale), gradient clipping at the same norm.

Both: AdamW lr 1e-3, weight decay 1e-4, betas (0.9, 0.999), eps 1e-8 (the recipe's), fused on
both sides (``build_optimizer`` picks the fused kernel; ``open_clip_train``'s default unfused
one computes the same update up to rounding), a constant learning rate (no warmup: the two
trainers' warmup formulas differ by one step), clipping at 1.0, on the CPU, batch 256; each
epoch is a seeded permutation of the training images cut into full batches (the rest dropped),
each image paired with one of its class's captions drawn from a seeded generator. The two
sides' steps alternate (ours, then theirs) and each side's step times are summed (the first
step of each, which sets up the optimiser state, left out), so steps/s of both is measured under
the same load.

Each run is done in float32 (as training runs) and again in float64 (``--dtypes``): the float32
rounding differences of each step's gradients (~1e-7 relative) are carried through hundreds of
Adam steps and leave a few weight entries visibly apart (up to ~1e-3 of the largest weight, while
the tensors differ by ~1e-6 in L2); in float64 the same runs must agree to ~1e-10, which shows
that what is left in float32 is rounding, not a different formula.

Reported per precision: the two losses and every gradient of one batch before training (largest
relative difference), the largest difference of the two loss curves, the final weights' largest
relative difference (per tensor: max |ours − theirs| / max |theirs|) and relative L2 difference
(‖ours − theirs‖ / ‖theirs‖), the final logit scales, steps/s of both, and zero-shot top-1
(``contralign.evaluation.ZeroShotEvaluator``, its default templates, all ten CIFAR-10 class
names, five of them distractors) on the next ``--test-per-class`` images of each class, before
training and after it for both sides. Both sides are evaluated through the same encoders: each
image's stored locked-tower features (MiniLM features of the prompts) through that side's head.
``--tower-check`` also evaluates ours (float32) through its own towers' ``encode`` (images
decoded and embedded again), which must give the same top-1.

Needs open_clip (``open_clip_torch``) and the EfficientNet-Lite0 packages: run with the
``.venv-ref`` interpreter.

Run: ``.venv-ref/bin/python benchmarks/clip_parity.py [--steps 300] [--train-per-class 160]
[--test-per-class 100] [--dtypes float32,float64] [--tower-check] [--threads N] [--json]``
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import (  # noqa: E402
    cifar_per_class,
    machine,
    print_json,
    print_machine,
    ratio,
)
from torch import Tensor, nn  # noqa: E402

SEED = 0
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Largest differences still called rounding: float32 carried through the steps, float64.
TOLERANCE = {"float32": {"loss": 1e-4, "weights": 1e-2}, "float64": {"loss": 1e-9, "weights": 1e-8}}
TOWER_CHECK = "contralign, towers' encode"
SIDES = ("contralign", "open_clip")


# --- data and locked features -------------------------------------------------------------------


@dataclass
class Data:
    """The items, labels and captions, and their locked features (float32)."""

    train_items: list[Any]
    train_labels: np.ndarray
    test_items: list[Any]
    test_labels: np.ndarray
    class_names: list[str]
    texts: list[str]  # the captions: each class's templates, class-major
    captions: dict[int, list[int]]  # class -> its captions' rows in texts
    image_features: Tensor | None = None  # (N, 1280)
    text_features: Tensor | None = None  # (T, 384)
    test_features: Tensor | None = None  # (M, 1280)


def read_data(train_per_class: int, test_per_class: int, templates: Sequence[str]) -> Data:
    from contralign.core.items import ImageItem

    train_images, train_labels, classes = cifar_per_class(train_per_class)
    test_images, test_labels, _ = cifar_per_class(test_per_class, skip=train_per_class)
    names = [str(c) for c in classes]
    present = sorted({int(label) for label in train_labels})  # the classes with images
    texts = [t.format(label=names[c]) for c in present for t in templates]
    captions = {c: list(range(i * len(templates), (i + 1) * len(templates)))
                for i, c in enumerate(present)}
    return Data([ImageItem.from_array(a, "cifar-train", r) for r, a in enumerate(train_images)],
                train_labels, [ImageItem.from_array(a, "cifar-test", r)
                               for r, a in enumerate(test_images)], test_labels, names, texts,
                captions)


def ids_of(items: Sequence[Any]) -> Tensor:
    """``(n,)`` int64 item ids, as ``fit``'s batches carry them (``training.batches``)."""
    from contralign.core.items import item_key
    from contralign.data import text_id

    return torch.tensor([text_id(item_key(item)) for item in items], dtype=torch.long)


def locked_features(tower: Any, items: Sequence[Any]) -> Tensor:
    """``(n, F)`` features of raw ``items`` through a fresh ``FeatureCache`` (a cache miss:
    preprocessed and embedded as in training)."""
    from contralign.core.items import ItemBatch
    from contralign.encoders.model import FeatureCache

    return FeatureCache().features(tower, {"items": ItemBatch(items)}, ids_of(items))


class StoredFeatures:
    """Stands in for a locked tower while its cache is filled: serves stored rows."""

    def __init__(self, table: Tensor) -> None:
        self.table = table

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        return self.table[batch["row"]]  # (n, F)


def fill_cache(cache: Any, table: Tensor, keys: Tensor) -> None:
    """Put ``table``'s rows into ``cache`` under ``keys``, through ``FeatureCache.features``."""
    cache.features(StoredFeatures(table), {"row": torch.arange(len(keys))}, keys)


# --- the two sides ------------------------------------------------------------------------------


def parity_config(steps: int, threads: int | None) -> Any:
    """The ``lit`` recipe (both towers locked, clip loss with a learned temperature from 0.07)
    with a head on each tower (the recipe has only the image head: a text head of the same width
    is added) and a constant learning rate; data settings unused (batches are made here)."""
    import yaml

    from contralign.training.config import TrainConfig
    from contralign.training.recipes import find_config

    raw = yaml.safe_load(find_config("lit").read_text(encoding="utf-8"))
    towers = raw["model"]["towers"]
    towers["text"]["projection_dim"] = towers["image"]["projection_dim"]
    raw["data"]["path"] = "unused.npz"
    raw["optim"].update(schedule="constant", warmup_ratio=0.0)
    raw["train"].update(max_steps=steps, threads=threads)
    return TrainConfig.model_validate(raw)


def build_ours(config: Any) -> Any:
    """The task a lit config builds, its heads drawn from seed ``SEED``, in training mode.

    ``fit`` calls ``task.train()`` before its first step, which puts the locked towers in eval
    mode; a freshly built model is still in training mode (BatchNorm on batch statistics,
    dropout on), so it is called here before any feature is computed."""
    from contralign.training.build import build_model, build_task

    torch.manual_seed(SEED)
    return build_task(config, build_model(config)).train()


class OpenClipSide(nn.Module):
    """The reference: two linear heads and open_clip's logit scale, trained by ``ClipLoss``."""

    def __init__(self, image_head: nn.Linear, text_head: nn.Linear) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_head.in_features, image_head.out_features, bias=False)
        self.text_proj = nn.Linear(text_head.in_features, text_head.out_features, bias=False)
        with torch.no_grad():  # the same initial weights as ours
            self.image_proj.weight.copy_(image_head.weight)
            self.text_proj.weight.copy_(text_head.weight)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))  # as open_clip's CLIP

    def encode_image(self, features: Tensor) -> Tensor:
        return F.normalize(self.image_proj(features), dim=-1)  # (B, 384)

    def encode_text(self, features: Tensor) -> Tensor:
        return F.normalize(self.text_proj(features), dim=-1)  # (B, 384)

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """``open_clip_train``'s rule: no decay on gains, biases and the logit scale."""
        def exclude(name: str, p: Tensor) -> bool:
            return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name \
                or "logit_scale" in name

        named = list(self.named_parameters())
        return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                {"params": [p for n, p in named if not exclude(n, p)],
                 "weight_decay": weight_decay}]


def batches(data: Data, batch_size: int, steps: int) -> list[tuple[Tensor, Tensor]]:
    """``steps`` batches of (image rows, caption rows): each epoch a seeded permutation cut into
    full batches, each image with a caption of its class drawn at random."""
    if len(data.train_items) < batch_size:
        raise SystemExit(f"clip_parity: {len(data.train_items)} training images make no batch of "
                         f"{batch_size}; raise --train-per-class")
    generator = torch.Generator().manual_seed(SEED)
    out: list[tuple[Tensor, Tensor]] = []
    while len(out) < steps:
        order = torch.randperm(len(data.train_items), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            picks = torch.randint(0, 1 << 30, (batch_size,), generator=generator).tolist()
            own = [data.captions[int(data.train_labels[r])] for r in rows.tolist()]
            out.append((rows, torch.tensor([c[p % len(c)] for c, p in zip(own, picks,
                                                                          strict=True)])))
    return out[:steps]


# --- one precision -------------------------------------------------------------------------------


class Run:
    """Both sides in one precision: the same initial heads, batches and settings."""

    def __init__(self, config: Any, data: Data, dtype: torch.dtype, task: Any | None = None
                 ) -> None:
        from open_clip.loss import ClipLoss

        from contralign.training.optim import build_optimizer, build_scheduler

        assert data.image_features is not None and data.text_features is not None
        self.config, self.data, self.dtype = config, data, dtype
        self.task = (task if task is not None else build_ours(config)).to(dtype)
        model = self.task.model
        self.image_tower, self.text_tower = model.towers["image"], model.towers["text"]
        self.image_keys, self.text_keys = ids_of(data.train_items), ids_of(data.texts)
        fill_cache(model.caches["image"], data.image_features.to(dtype), self.image_keys)
        fill_cache(model.caches["text"], data.text_features.to(dtype), self.text_keys)
        optim = config.optim
        self.optimizer = build_optimizer(self.task, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, config.train.max_steps)
        self.reference = OpenClipSide(self.image_tower.head, self.text_tower.head).to(dtype)
        self.clip_loss = ClipLoss()
        self.ref_optimizer = torch.optim.AdamW(
            self.reference.parameter_groups(optim.weight_decay), lr=optim.lr,
            betas=optim.betas, eps=optim.eps, fused=True)
        self.task.train()  # locked towers in eval mode
        self.clamped = 0

    def batch(self, rows: Tensor, caps: Tensor) -> dict[str, Any]:
        """Our batch: raw items and item ids of each role, as ``fit``'s collator makes it."""
        from contralign.core.items import ItemBatch

        data = self.data
        return {"anchor": {"items": ItemBatch(data.train_items[r] for r in rows.tolist())},
                "positive": {"items": ItemBatch(data.texts[c] for c in caps.tolist())},
                "keys": {"anchor": self.image_keys[rows], "positive": self.text_keys[caps]},
                "anchor_ids": self.image_keys[rows], "positive_ids": self.text_keys[caps]}

    def reference_loss(self, rows: Tensor, caps: Tensor) -> Tensor:
        assert self.data.image_features is not None and self.data.text_features is not None
        ref = self.reference
        images = self.data.image_features[rows].to(self.dtype)  # (B, 1280)
        texts = self.data.text_features[caps].to(self.dtype)  # (B, 384)
        return self.clip_loss(ref.encode_image(images), ref.encode_text(texts),
                              ref.logit_scale.exp())

    def ours_params(self) -> dict[str, Tensor]:
        return {"image head": self.image_tower.head.weight,
                "text head": self.text_tower.head.weight,
                "log logit scale": self.task.objective.log_scale}

    def reference_params(self) -> dict[str, Tensor]:
        ref = self.reference
        return {"image head": ref.image_proj.weight, "text head": ref.text_proj.weight,
                "log logit scale": ref.logit_scale}

    def first_gradients(self, rows: Tensor, caps: Tensor) -> dict[str, float]:
        """Loss and gradients of one batch on both sides, before training: largest relative
        differences (the optimisers are not stepped; gradients are cleared after)."""
        ours = self.task(self.batch(rows, caps))["loss"]
        ours.backward()
        theirs = self.reference_loss(rows, caps)
        theirs.backward()
        out = {"loss": abs(float(ours.detach()) - float(theirs.detach()))}
        for name, p in self.ours_params().items():
            q = self.reference_params()[name]
            assert p.grad is not None and q.grad is not None
            out[name] = float((p.grad - q.grad).abs().max() / q.grad.abs().max())
        self.optimizer.zero_grad(set_to_none=True)
        self.ref_optimizer.zero_grad(set_to_none=True)
        return out

    def step_ours(self, rows: Tensor, caps: Tensor) -> float:
        from contralign.training.loop import _step

        return _step(self.task, self.batch(rows, caps), self.optimizer, self.scheduler,
                     self.config)["loss"]

    def step_reference(self, rows: Tensor, caps: Tensor) -> float:
        loss = self.reference_loss(rows, caps)
        loss.backward()
        max_norm = self.config.optim.max_grad_norm
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.reference.parameters(), max_norm)
        self.ref_optimizer.step()
        self.ref_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # open_clip_train: clamp to ln(100) after each step
            scale = self.reference.logit_scale
            self.clamped += int(scale > math.log(100))
            scale.clamp_(0, math.log(100))
        return float(loss.detach())

    def train(self, plan: list[tuple[Tensor, Tensor]]) -> dict[str, Any]:
        losses: dict[str, list[float]] = {side: [] for side in SIDES}
        seconds = {side: 0.0 for side in SIDES}
        steppers = {"contralign": self.step_ours, "open_clip": self.step_reference}
        for step, (rows, caps) in enumerate(plan):
            for side in SIDES:
                start = time.perf_counter()
                losses[side].append(steppers[side](rows, caps))
                if step:  # the first step sets up the optimiser state
                    seconds[side] += time.perf_counter() - start
        speed = {side: (len(plan) - 1) / s if s else float("nan") for side, s in seconds.items()}
        return {"losses": losses, "steps_per_second": speed}

    def zero_shot(self, evaluator: Any, side: str) -> float:
        """Top-1 of ``side``'s heads on the stored test features (prompts: MiniLM features)."""
        from contralign.evaluation.protocol import Sides

        data = self.data
        assert data.test_features is not None
        stored = dict(zip([item.key for item in data.test_items],
                          data.test_features.to(self.dtype), strict=True))
        text_tower = self.text_tower

        def images(items: list[Any]) -> Tensor:
            return torch.stack([stored[item.key] for item in items])

        def texts(items: list[Any]) -> Tensor:
            return text_tower.features(text_tower.preprocess(items))

        ours = side == "contralign"
        image_project = self.image_tower.project if ours else self.reference.encode_image
        text_project = self.text_tower.project if ours else self.reference.encode_text
        return evaluator(Sides(HeadOnFeatures("image", image_project, images),
                               HeadOnFeatures("text", text_project, texts)))["top1"]


class HeadOnFeatures:
    """An encoder for evaluation: stored locked features of images (by key) or the text tower's
    features of texts, through one side's ``project``."""

    def __init__(self, modality: str, project: Callable[[Tensor], Tensor],
                 lookup: Callable[[list[Any]], Tensor]) -> None:
        self.modality = modality
        self.project = project
        self.lookup = lookup

    def encode(self, items: list[Any], batch_size: int = 32) -> np.ndarray:
        with torch.no_grad():
            return self.project(self.lookup(list(items))).numpy()  # (N, 384)


def compare(run: Run) -> dict[str, Any]:
    """The final weights' differences and logit scales."""
    ours = {n: p.detach() for n, p in run.ours_params().items()}
    theirs = {n: p.detach() for n, p in run.reference_params().items()}
    return {
        "max_relative": {n: float((ours[n] - w).abs().max() / w.abs().max())
                         for n, w in theirs.items()},
        "l2_relative": {n: float((ours[n] - w).norm() / w.norm()) for n, w in theirs.items()},
        "logit_scale": {"contralign": float(run.task.objective.logit_scale),
                        "open_clip": float(run.reference.logit_scale.exp())},
        "log_scale_raw": {"contralign": float(run.task.objective.log_scale),
                          "open_clip": float(run.reference.logit_scale)},
    }


def run_precision(name: str, config: Any, data: Data, evaluator: Any, args: argparse.Namespace,
                  task: Any | None) -> dict[str, Any]:
    run = Run(config, data, DTYPES[name], task)
    plan = batches(data, config.train.batch_size, args.steps)
    result: dict[str, Any] = {"dtype": name, "first_batch": run.first_gradients(*plan[0])}
    result["zero_shot_before"] = run.zero_shot(evaluator, "contralign")
    result.update(run.train(plan))
    result.update(compare(run))
    result["zero_shot_after"] = {side: run.zero_shot(evaluator, side) for side in SIDES}
    if args.tower_check and name == "float32":  # ours through its own towers' encode
        from contralign.evaluation.protocol import Sides

        result["zero_shot_after"][TOWER_CHECK] = evaluator(
            Sides(run.image_tower, run.text_tower))["top1"]
    result["clamped_steps"] = run.clamped
    losses = result["losses"]
    result["max_loss_diff"] = max(abs(a - b) for a, b in zip(*losses.values(), strict=True))
    limits = TOLERANCE[name]
    result["agree"] = result["max_loss_diff"] < limits["loss"] and \
        max(result["max_relative"].values()) < limits["weights"]
    return result


# --- report --------------------------------------------------------------------------------------


def print_result(result: dict[str, Any]) -> None:
    losses, speed = result["losses"], result["steps_per_second"]
    zero_shot, scale = result["zero_shot_after"], result["logit_scale"]
    print(f"{result['dtype']}:")
    print(f"  {'side':<11} | {'first loss':>10} | {'last loss':>10} | {'logit scale':>11} | "
          f"{'steps/s':>8} | {'zero-shot top-1':>15}")
    for side in SIDES:
        print(f"  {side:<11} | {losses[side][0]:10.6f} | {losses[side][-1]:10.6f} | "
              f"{scale[side]:11.5f} | {speed[side]:8.1f} | {zero_shot[side]:15.4f}")
    first = result["first_batch"]
    print("  one batch before training, |loss diff| "
          f"{first['loss']:.1e}; gradients max relative diff: "
          + ", ".join(f"{n} {v:.1e}" for n, v in first.items() if n != "loss"))
    print(f"  loss curves max |diff| {result['max_loss_diff']:.1e}; final weights max relative "
          "diff: " + ", ".join(f"{n} {v:.1e}" for n, v in result["max_relative"].items())
          + "; relative L2 diff: "
          + ", ".join(f"{n} {v:.1e}" for n, v in result["l2_relative"].items())
          + f" ({'ok' if result['agree'] else 'MISMATCH'})")
    print(f"  zero-shot top-1 before training {result['zero_shot_before']:.4f}"
          + (f"; ours through its towers' encode after: {zero_shot[TOWER_CHECK]:.4f}"
             if TOWER_CHECK in zero_shot else "")
          + f"; steps/s ours/open_clip {ratio(speed['contralign'], speed['open_clip']):.2f}; "
          f"open_clip's clamp acted on {result['clamped_steps']} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-per-class", type=int, default=160)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--dtypes", default="float32,float64",
                        help="precisions to run, comma-separated (float32, float64)")
    parser.add_argument("--tower-check", action="store_true",
                        help="also evaluate ours through its towers' own encode (float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= set(DTYPES):
        parser.error(f"--dtypes: expected float32 and/or float64, got {args.dtypes!r}")
    try:
        import open_clip
    except ImportError:
        raise SystemExit("clip_parity: needs open_clip (open_clip_torch); run it with "
                         ".venv-ref/bin/python") from None
    from contralign.evaluation import ZeroShotEvaluator

    config = parity_config(args.steps, args.threads)
    assert config.data.captions is not None
    data = read_data(args.train_per_class, args.test_per_class, config.data.captions.templates)
    info = machine(args.threads)
    info["open_clip"] = open_clip.__version__
    print_machine(info)
    task = build_ours(config)  # float32; its towers compute the locked features
    towers = task.model.towers
    started = time.perf_counter()
    data.image_features = locked_features(towers["image"], data.train_items)
    data.text_features = locked_features(towers["text"], data.texts)
    data.test_features = locked_features(towers["image"], data.test_items)
    feature_seconds = time.perf_counter() - started
    optim = config.optim
    print(f"open_clip {info['open_clip']}; locked features of {len(data.train_items)} train + "
          f"{len(data.test_items)} test images and {len(data.texts)} captions in "
          f"{feature_seconds:.1f} s")
    print(f"{args.steps} steps, batch {config.train.batch_size}, {len(data.train_items)} training "
          f"images ({args.train_per_class} per class), AdamW lr {optim.lr:g} constant, weight "
          f"decay {optim.weight_decay:g}, clipping {optim.max_grad_norm}; zero-shot on "
          f"{len(data.test_items)} held-out images ({args.test_per_class} per class), 10 classes")
    evaluator = ZeroShotEvaluator(data.test_items, data.test_labels.tolist(), data.class_names)
    results = []
    for name in dtypes:
        results.append(run_precision(name, config, data, evaluator, args,
                                     task if name == "float32" else None))
        print_result(results[-1])
    load_end = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) at the end: {load_end}; timings on a busy machine are noisy")
    if args.json:
        print_json({"benchmark": "clip_parity", "machine": info, "load_average_end": load_end,
                    "steps": args.steps, "train_images": len(data.train_items),
                    "test_images": len(data.test_items), "feature_seconds": feature_seconds,
                    "runs": results})


if __name__ == "__main__":
    main()
