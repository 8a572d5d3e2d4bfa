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

from torch import nn

from contralign.core.heads import ProjectionHead

__all__ = ["ProjectionHead", "has_batchnorm"]


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (it then normalises by the rows it sees)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
