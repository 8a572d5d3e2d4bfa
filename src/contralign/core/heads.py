"""Small MLPs the training layer and the objectives share: ``ProjectionHead``.

SimCLR's projection head ``g`` (arXiv:2002.05709, section 4.2) and the predictors of SimSiam
(arXiv:2011.10566) and BYOL (arXiv:2006.07733) are the same shape of network: ``Linear ->
[BatchNorm1d] -> ReLU`` for each hidden width, then a plain ``Linear``, as lightly builds its
``ProjectionHead``. It lives here, below both ``encoders`` (the towers' training heads) and
``objectives`` (the predictors inside an objective).
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
