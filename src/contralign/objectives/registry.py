"""The explicit registry of objectives, chosen by name in configs.

An entry names its module class by dotted path and imports it (and so torch) only when the
objective is built or its parameters are validated. Listing the registry (``contralign
objectives``) reads each constructor's parameters and defaults from its module's source instead
(``ObjectiveInfo.defaults``): the constructor stays the one place they are written, and a test
checks that the source reading equals ``inspect.signature`` of every registered class.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

# How an objective is split over processes (``training.distributed`` explains each): every rank
# scores its own anchor rows against all gathered candidates (``rows``), computes the whole
# batch's loss on gathered embeddings (``full``, exact for any objective), or its own rows only
# (``local``: the objective brings its own negatives or sums over ranks itself).
Split = Literal["rows", "full", "local"]

# Constructor arguments that are not config parameters: ``dim`` comes from the tower.
_NOT_PARAMETERS = ("self", "dim")


@dataclass(frozen=True)
class ObjectiveInfo:
    """A registered objective: its module, what it needs from the batch, and its paper.

    Attributes:
        class_path: the ``nn.Module`` class, ``contralign.objectives.<family>.<Class>``.
        requires: fields of ``Embedded`` that must be present.
        paper: the arXiv ids it follows.
        summary: one line on what it does.
        momentum_keys: keys come from a momentum copy of the tower (MoCo).
        swappable: takes ``symmetric: true`` (a task setting): each view is also embedded by the
            other's tower, so each item is scored in both directions (MoCo's symmetric loss).
        optional_momentum_keys: ``momentum: m`` may take the keys from a momentum copy (1.0: a
            frozen copy, as in LiT).
        split: how it is split over processes (``Split``); a tiled loss is always ``full``.
        tiled: it has a tiled form (``tiled: true``, ``tile_size``: ``objectives.tiled``).
    """

    class_path: str
    requires: tuple[str, ...]
    paper: str
    summary: str
    momentum_keys: bool = False
    swappable: bool = False
    optional_momentum_keys: bool = False
    split: Split = "full"
    tiled: bool = False

    def split_for(self, params: dict[str, Any]) -> Split:
        """The split of this objective built with ``params``: a tiled loss's blocks always start
        at row 0, so it computes the whole batch (``full``)."""
        return "full" if self.tiled and params.get("tiled") else self.split

    @property
    def module(self) -> type[nn.Module]:
        """The module class, imported on first use."""
        module_name, _, class_name = self.class_path.rpartition(".")
        cls: type[nn.Module] = getattr(importlib.import_module(module_name), class_name)
        return cls

    def parameters(self) -> dict[str, tuple[Any, Any]]:
        """``{name: (annotation, default)}`` of the module's constructor; annotations keep their
        constraints (``Annotated[float, Gt(0)]``), which configs validate. Imports the module."""
        init = self.module.__init__
        hints = typing.get_type_hints(init, include_extras=True)
        signature = inspect.signature(init)
        return {name: (hints.get(name, Any), param.default)
                for name, param in signature.parameters.items() if name not in _NOT_PARAMETERS}

    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` of the module's constructor (``inspect.Parameter.empty`` when it
        has none), read from the source without importing it (or torch)."""
        module_name, _, class_name = self.class_path.rpartition(".")
        return _constructor_defaults(module_name, class_name)


OBJECTIVES: dict[str, ObjectiveInfo] = {
    "info_nce": ObjectiveInfo(
        "contralign.objectives.contrastive.InfoNCELoss", ("key",),
        "arXiv:1807.03748 (InfoNCE); arXiv:2104.08821 (SimCSE)",
        "In-batch-negative InfoNCE with hard negatives, duplicate masking, optional symmetry.",
        split="rows", tiled=True,
    ),
    "nt_xent": ObjectiveInfo(
        "contralign.objectives.multiview.NTXentLoss", (),
        "arXiv:2002.05709 (SimCLR); arXiv:1906.05849 (CMC); arXiv:2403.05490",
        "NT-Xent over V >= 2 views: pairwise (CMC), multi-positive, or poly-view (geometric).",
        split="rows",
    ),
    "clip": ObjectiveInfo(
        "contralign.objectives.clip.CLIPLoss", ("key",),
        "arXiv:2103.00020 (CLIP); arXiv:2102.05918 (ALIGN)",
        "Symmetric softmax loss with a learned temperature clamped at 0.01, label smoothing.",
        split="rows",
    ),
    "siglip": ObjectiveInfo(
        "contralign.objectives.sigmoid.SigLIPLoss", ("key",), "arXiv:2303.15343 (SigLIP)",
        "Pairwise sigmoid loss with learned temperature and bias.",
        split="rows", tiled=True,
    ),
    "supcon": ObjectiveInfo(
        "contralign.objectives.supervised.SupConLoss", ("labels",), "arXiv:2004.11362 (SupCon)",
        "Supervised contrastive: every item with the same label is a positive.",
        split="rows",
    ),
    "debiased": ObjectiveInfo(
        "contralign.objectives.debiased.DebiasedContrastiveLoss", ("key",),
        "arXiv:2007.00224 (debiased contrastive)",
        "NT-Xent with the negative term debiased by a positive-class prior tau_plus.",
        split="rows",
    ),
    "hard_negative": ObjectiveInfo(
        "contralign.objectives.debiased.HardNegativeContrastiveLoss", ("key",),
        "arXiv:2010.04592 (hard negative sampling)",
        "Debiased contrastive with negatives reweighted by their hardness (concentration beta).",
        split="rows",
    ),
    "decoupled": ObjectiveInfo(
        "contralign.objectives.decoupled.DecoupledContrastiveLoss", ("key",),
        "arXiv:2110.06848 (DCL/DCLW)",
        "Positive removed from the denominator; optional von Mises-Fisher weighting (DCLW).",
        split="rows",
    ),
    "align_uniform": ObjectiveInfo(
        "contralign.objectives.geometry.AlignUniformLoss", ("key",),
        "arXiv:2005.10242 (alignment and uniformity)",
        "Weighted alignment + uniformity losses on the hypersphere.",
    ),
    "cwcl": ObjectiveInfo(
        "contralign.objectives.cwcl.CWCLLoss", ("key",), "arXiv:2309.14580 (CWCL)",
        "Cross-modal softmax against soft targets from one side's own similarities.",
        optional_momentum_keys=True, split="rows",
    ),
    "one_to_k": ObjectiveInfo(
        "contralign.objectives.one_to_k.OneToKContrastiveLoss", ("views",),
        "arXiv:2406.18254 (1-to-K contrastive, KDD 2024)",
        "One anchor against its K aligned views at once, both directions weighted as the "
        "authors' code ((L_i2t + L_t2i) / 2K).",
        split="rows",
    ),
    "moco": ObjectiveInfo(
        "contralign.objectives.momentum.MoCoLoss", ("key",),
        "arXiv:1911.05722 (MoCo); arXiv:2003.04297 (MoCo v2)",
        "InfoNCE against a FIFO queue of keys from a momentum copy of the tower.",
        momentum_keys=True, swappable=True, split="local",
    ),
    "simsiam": ObjectiveInfo(
        "contralign.objectives.predictive.SimSiamLoss", ("key",), "arXiv:2011.10566 (SimSiam)",
        "Each view's embedding predicts the other's (stop-gradient) through a predictor MLP; "
        "no negatives.",
    ),
    "byol": ObjectiveInfo(
        "contralign.objectives.predictive.BYOLLoss", ("key",), "arXiv:2006.07733 (BYOL)",
        "The online view predicts a momentum copy's embedding of the other view through a "
        "predictor MLP; no negatives.",
        momentum_keys=True,
    ),
    "swav": ObjectiveInfo(
        "contralign.objectives.prototypes.SwAVLoss", ("key",), "arXiv:2006.09882 (SwAV)",
        "Swapped prediction of Sinkhorn-Knopp codes over learnable prototypes.",
        split="local",
    ),
    "whitened_cse": ObjectiveInfo(
        "contralign.objectives.whitening.WhitenedCSELoss", ("key",),
        "arXiv:2305.17746 (WhitenedCSE, ACL 2023)",
        "Contrastive loss on shuffled-group-whitened embeddings, several whitened positives.",
    ),
    "conr": ObjectiveInfo(
        "contralign.objectives.regression.ConRLoss", ("scores",),
        "arXiv:2309.06651 (ConR, ICLR 2024)",
        "Contrastive regulariser for imbalanced regression on the score role.",
        split="rows",
    ),
    "distill_mse": ObjectiveInfo(
        "contralign.objectives.distillation.DistillMSELoss", ("key", "targets"),
        "arXiv:2004.09813 (multilingual knowledge distillation)",
        "MSE of the student's source and translation embeddings to a locked teacher's "
        "embedding of the source (model.roles.teacher).",
        split="local",
    ),
}


def build_objective(name: str, params: dict[str, Any], dim: int | None = None) -> nn.Module:
    """Build a registered objective; ``dim`` (the tower's width) is passed to those that need it.

    ``params`` go to the constructor as they are: a config checks them first
    (``ObjectiveConfig``), so here a bad one is a programming error and raises what the
    constructor raises.

    Raises:
        ValueError: an unknown name, or a parameter value the constructor rejects.
        TypeError: a parameter the constructor does not take.
    """
    if name not in OBJECTIVES:
        known = ", ".join(sorted(OBJECTIVES))
        raise ValueError(f"objective: unknown name {name!r}; known: {known}")
    module = OBJECTIVES[name].module
    if dim is not None and "dim" in inspect.signature(module.__init__).parameters:
        params = {"dim": dim, **params}
    return module(**params)


# --- reading defaults from the source ---------------------------------------------------------


@functools.cache
def _module_tree(module_name: str) -> ast.Module:
    spec = importlib.util.find_spec(module_name)  # imports the parent package, not the module
    if spec is None or spec.origin is None:
        raise ImportError(f"no source for {module_name}")
    with open(spec.origin, encoding="utf-8") as source:
        return ast.parse(source.read(), filename=spec.origin)


def _constructor_defaults(module_name: str, class_name: str) -> dict[str, Any]:
    tree = _module_tree(module_name)
    init = next(node for cls in tree.body if isinstance(cls, ast.ClassDef)
                and cls.name == class_name for node in cls.body
                if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    arguments = init.args
    positional = [*arguments.posonlyargs, *arguments.args]
    missing: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    pairs = [*zip(positional, [*missing, *arguments.defaults], strict=True),
             *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)]
    return {arg.arg: inspect.Parameter.empty if node is None else _value(node, module_name)
            for arg, node in pairs if arg.arg not in _NOT_PARAMETERS}


def _value(node: ast.expr, module_name: str) -> Any:
    """A literal, or a module-level constant of ``module_name`` (followed through
    ``from contralign... import NAME``)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        if not isinstance(node, ast.Name):
            raise
    for statement in _module_tree(module_name).body:
        match statement:
            case ast.Assign(targets=[ast.Name(id=node.id)], value=value) | ast.AnnAssign(
                    target=ast.Name(id=node.id), value=ast.expr() as value):
                return _value(value, module_name)
            case ast.ImportFrom(module=str(source), level=0, names=names) if any(
                    (alias.asname or alias.name) == node.id for alias in names):
                original = next(alias.name for alias in names
                                if (alias.asname or alias.name) == node.id)
                return _value(ast.Name(id=original), source)
    raise ValueError(f"{module_name}: cannot read the constant {node.id} from the source")
