"""Training-only heads: a projection head (and its momentum copy) that the loss reads and the
saved model leaves out.

SimCLR (arXiv:2002.05709, §4.2 and B.9) and MoCo v2 (arXiv:2003.04297) train the objective on a
small MLP ``g`` over the encoder's output ``h`` and keep ``h`` as the representation: the head is
dropped after training. ``ProjectionHead`` is that ``g``, built as lightly's
``ProjectionHead`` builds it: ``Linear -> [BatchNorm1d] -> ReLU`` for each hidden width, then a
plain ``Linear`` to the last width (a linear layer has a bias only where no BatchNorm follows
it). ``AlignmentModel`` applies it to a tower's embedding in training only; the tower itself, and
so its saved folder, ``encode`` and every dev evaluation, never see it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """An MLP ``(B, in_dim) -> (B, dims[-1])``.

    Args:
        in_dim: the width of the tower's embedding.
        dims: the hidden widths, then the output width (``[2048, 128]``: SimCLR's head on a
            2048-d ResNet-50; ``[128]``: one linear layer).
        batch_norm: BatchNorm1d after each hidden layer (SimCLR; MoCo v2's head has none).

    Raises:
        ValueError: no widths, or a width below 1.
    """

    def __init__(self, in_dim: int, dims: Sequence[int], batch_norm: bool = True) -> None:
        super().__init__()
        if not dims or min(dims) < 1 or in_dim < 1:
            raise ValueError(f"ProjectionHead: widths must be at least 1, got {in_dim} -> "
                             f"{list(dims)}")
        layers: list[nn.Module] = []
        widths = [in_dim, *dims]
        for width_in, width_out in zip(widths[:-2], widths[1:-1], strict=True):  # hidden layers
            layers.append(nn.Linear(width_in, width_out, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width_out))
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.layers = nn.Sequential(*layers)
        self.out_features = int(dims[-1])

    def forward(self, embeddings: Tensor) -> Tensor:
        """``(B, dims[-1])`` from ``(B, in_dim)``."""
        return self.layers(embeddings)


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (it then normalises by the rows it sees)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
