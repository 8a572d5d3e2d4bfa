"""Linear probe: multinomial logistic regression on frozen embeddings, with a fixed protocol.

The linear evaluation of self-supervised representations (SimCLR, Chen et al. 2020,
arXiv:2002.05709, Sec. B.5; CLIP, Radford et al. 2021, arXiv:2103.00020, Sec. 3.2, which fits
scikit-learn's L-BFGS logistic regression and sweeps the L2 strength on a validation split),
made deterministic and cheap enough to run during training:

1. Features are standardised with the mean and standard deviation of the training rows (a
   constant feature is only centred).
2. The classifier minimises scikit-learn's ``LogisticRegression`` objective,
   ``C * sum_i CE_i + ||W||^2 / 2`` (the bias not penalised), divided by ``C * N``:
   ``mean_i CE_i + ||W||^2 / (2 C N)``, with full-batch L-BFGS (strong Wolfe line search) in
   float64, from zero, for at most ``max_iter`` iterations or until the largest gradient entry
   is below ``tolerance``.
3. ``C``: one value is used as given; with several (the default ``DEFAULT_C_GRID``), each is fit
   on a fixed 80 % of the training rows (a seeded permutation), the one with the best accuracy
   on the other 20 % wins (the smaller ``C`` on a tie), and the probe is refit on all training
   rows with it.

Predictions are the class of highest logit (ties to the lower class index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contralign.evaluation.knn import FrozenFeatureClassifier, Label
from contralign.evaluation.protocol import Item

DEFAULT_C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
DEFAULT_MAX_ITER = 500
DEFAULT_TOLERANCE = 1e-6
HELD_OUT = 0.2  # the share of training rows that chooses C from a grid
SPLIT_SEED = 0


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: standardisation and the linear map.

    Attributes:
        mean: ``(D,)`` training feature means.
        scale: ``(D,)`` training feature standard deviations (1 where a feature is constant).
        weight: ``(C, D)`` coefficients on standardised features.
        bias: ``(C,)`` intercepts.
        c: the inverse regularisation strength used.
        iterations: L-BFGS iterations run.
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    c: float
    iterations: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(M, C)`` float64 logits of ``(M, D)`` raw features."""
        standard = (np.asarray(features, np.float64) - self.mean) / self.scale  # (M, D)
        return standard @ self.weight.T + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(M,)`` int64 class of highest logit."""
        return np.argmax(self.logits(features), axis=1).astype(np.int64)


def fit_linear_probe(
    features: np.ndarray, labels: np.ndarray, classes: int, c: float = 1.0, *,
    max_iter: int = DEFAULT_MAX_ITER, tolerance: float = DEFAULT_TOLERANCE,
) -> LinearProbe:
    """Fit the probe of the module docstring with one ``C``.

    Args:
        features: ``(N, D)`` training features.
        labels: ``(N,)`` int class indices in ``[0, classes)``.
        classes: ``C``; a class without training rows gets a very negative bias.
        c: inverse L2 strength, as scikit-learn's ``C``.
        max_iter: L-BFGS iterations at most.
        tolerance: stop when every gradient entry of the mean objective is below this.

    Returns:
        The fitted ``LinearProbe``.

    Raises:
        ValueError: empty or mismatched inputs, labels out of range, ``c`` not positive or
            ``max_iter`` below 1.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or 0 in x.shape or y.shape != (len(x),):
        raise ValueError(f"features must be (N, D) with (N,) labels, got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels must be class indices in [0, {classes})")
    if not c > 0 or max_iter < 1:
        raise ValueError(f"c must be positive and max_iter at least 1, got c={c}, "
                         f"max_iter={max_iter}")
    import torch  # here: `import contralign.evaluation` stays free of torch

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    inputs = torch.from_numpy((x - mean) / scale)  # (N, D) float64
    targets = torch.from_numpy(y.astype(np.int64))
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * c * len(x))
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=tolerance, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Any:
        optimizer.zero_grad()
        logits = inputs @ weight.T + bias  # (N, C)
        loss = torch.nn.functional.cross_entropy(logits, targets) + penalty * weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(objective)  # type: ignore[no-untyped-call]
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    return LinearProbe(mean, scale, weight.detach().numpy().copy(), bias.detach().numpy().copy(),
                       float(c), iterations)


def choose_c(features: np.ndarray, labels: np.ndarray, classes: int, grid: Sequence[float], *,
             max_iter: int = DEFAULT_MAX_ITER, tolerance: float = DEFAULT_TOLERANCE
             ) -> tuple[float, dict[float, float]]:
    """The ``C`` of ``grid`` with the best accuracy on a fixed held-out 20 % of the rows.

    Returns:
        ``(best C, {C: held-out accuracy})``; the smaller ``C`` wins a tie.

    Raises:
        ValueError: an empty grid, or fewer than 2 training rows.
    """
    if not grid:
        raise ValueError("the C grid is empty")
    n = len(features)
    if n < 2:
        raise ValueError(f"choosing C needs at least 2 training rows, got {n}")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    held = max(1, int(round(HELD_OUT * n)))
    fit_rows, held_rows = order[held:], order[:held]
    accuracy: dict[float, float] = {}
    for c in sorted(grid):
        probe = fit_linear_probe(features[fit_rows], labels[fit_rows], classes, c,
                                 max_iter=max_iter, tolerance=tolerance)
        accuracy[c] = float(np.mean(probe.predict(features[held_rows]) == labels[held_rows]))
    best = max(accuracy.values())
    return next(c for c in sorted(accuracy) if accuracy[c] == best), accuracy


class LinearProbeEvaluator(FrozenFeatureClassifier):
    """Linear-probe accuracy of frozen embeddings (module docstring); primary ``top1``.

    Args:
        train_items: the ``N`` labelled items the probe is fit on.
        train_labels: their labels (class indices or names).
        test_items: the ``M`` items classified.
        test_labels: their labels; one absent from training counts as a miss.
        c: one inverse L2 strength, or a grid to choose from on held-out training rows
            (default ``DEFAULT_C_GRID``).
        max_iter: L-BFGS iterations at most per fit.
        tolerance: L-BFGS gradient tolerance.
        name: prefix for ``evaluate_all`` (``linear_probe/top1``).
        batch_size: passed to the tower's ``encode``.

    Raises:
        ValueError: an empty split, lengths that differ, mixed label kinds, a ``C`` that is not
            positive or an empty grid.
    """

    def __init__(self, train_items: Sequence[Item], train_labels: Sequence[Label],
                 test_items: Sequence[Item], test_labels: Sequence[Label], *,
                 c: float | Sequence[float] = DEFAULT_C_GRID, max_iter: int = DEFAULT_MAX_ITER,
                 tolerance: float = DEFAULT_TOLERANCE, name: str = "linear_probe",
                 batch_size: int = 64) -> None:
        grid = (float(c),) if isinstance(c, int | float) else tuple(float(v) for v in c)
        if not grid or not all(v > 0 for v in grid):
            raise ValueError(f"c: give one or more positive values, got {c}")
        super().__init__(train_items, train_labels, test_items, test_labels, name=name,
                         batch_size=batch_size)
        self.grid, self.max_iter, self.tolerance = grid, max_iter, tolerance
        self.probe: LinearProbe | None = None
        self.held_out: dict[float, float] = {}

    def scores(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        labels, classes = self.labels.train, len(self.labels.classes)
        c = self.grid[0]
        if len(self.grid) > 1:
            c, self.held_out = choose_c(train, labels, classes, self.grid,
                                        max_iter=self.max_iter, tolerance=self.tolerance)
        self.probe = fit_linear_probe(train, labels, classes, c, max_iter=self.max_iter,
                                      tolerance=self.tolerance)
        return self.probe.logits(test)

    def settings(self) -> dict[str, Any]:
        """The protocol and, after a call, the ``C`` chosen, for a JSON record."""
        return {"c_grid": list(self.grid), "max_iter": self.max_iter,
                "c": None if self.probe is None else self.probe.c,
                "held_out_accuracy": {str(k): v for k, v in self.held_out.items()},
                "train": len(self.train_items), "test": len(self.test_items)}
