"""A model: named towers plus a role -> tower map (``docs/design.md``, Towers and models).

``AlignmentModel(towers={"image": ..., "text": ...}, roles={"anchor": "image", "positive":
"text"})`` embeds each role of a batch with its tower: hard negatives (``negative.k``) with the
positive's, views (``view.k``) with the anchor's. A one-tower model maps every role to its one
tower (SimCSE: two views of one text through one tower).

A tower may be **locked** (``frozen``, LiT arXiv:2111.07991): its backbone gets no gradient (so
no optimiser state) and always runs in eval mode, while its projection head, if it has one,
trains; its features are computed once per item and cached (``FeatureCache``). A tower may be a
**momentum copy** of another (``MomentumEncoder``, MoCo arXiv:1911.05722): it embeds without a
graph and follows its source after each optimiser step.

A tower may have a **training head** (``encoders.heads.ProjectionHead``, SimCLR's ``g``): the
model applies it to the tower's embedding in ``embed``, so the loss reads it, but it lives beside
the towers, not in them: ``encode``, dev evaluation and the saved folder give the tower's own
embedding. A momentum copy's head is a momentum copy of its source's head (MoCo v2).

Saved, a one-tower model is its tower's own folder (a text tower's stays a
sentence-transformers folder); a model of several towers is one subfolder per online tower plus
a top-level ``contralign.json`` (``{"model": {"towers": {name: kind}, "roles": {...},
"frozen": [...]}}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contralign.core.errors import ModelNotFoundError
from contralign.core.io import atomic_directory
from contralign.core.outputs import MODEL, read_manifest
from contralign.encoders.momentum import MomentumEncoder

# Roles a batch holds, and the role whose tower each embeds with. ``teacher``: a locked tower's
# embedding of the anchors, the targets of distillation (arXiv:2004.09813).
ROLE_OF = {"anchor": "anchor", "view": "anchor", "positive": "positive", "negative": "positive",
           "teacher": "teacher"}
ONE_TOWER = "tower"  # the name of a one-tower model's tower
MULTI_TOWER = "model"  # contralign.json's tower kind of a model of several towers


class AlignmentModel(nn.Module):
    """Named towers and the role each embeds.

    Args:
        towers: tower name -> tower (a ``core.towers.Tower``, or a ``MomentumEncoder`` of one).
        roles: ``anchor`` and ``positive`` -> tower name; optionally ``teacher`` -> a locked
            tower that embeds the anchors as targets (distillation).
        frozen: names of towers whose backbone is locked.
        sources: momentum copy's name -> the tower it follows.
        heads: tower name -> its training head (``(B, D) -> (B, D')``), applied in ``embed``
            and never saved with the model; a momentum copy's follows its source's.

    Raises:
        ValueError: a role naming no tower, a role other than anchor/positive/teacher, a
            teacher that is not locked, a momentum copy that is frozen or follows no tower, or a
            frozen name that is not a tower, or a head for a tower that is not an online one.
    """

    def __init__(self, towers: Mapping[str, nn.Module], roles: Mapping[Any, str],
                 frozen: Iterable[str] = (), sources: Mapping[str, str] | None = None,
                 heads: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(dict(towers))
        self.roles = dict(roles)
        self.frozen = frozenset(frozen)
        self.sources = dict(sources or {})
        copies = {name for name, tower in self.towers.items()
                  if isinstance(tower, MomentumEncoder)}
        if set(self.sources) != copies or not set(self.sources.values()) <= set(self.towers):
            raise ValueError(f"sources: every momentum copy ({sorted(copies)}) needs the tower it "
                             f"follows; got {self.sources}")
        unknown = {role: name for role, name in self.roles.items()
                   if role not in ("anchor", "positive", "teacher") or name not in self.towers}
        if unknown or not {"anchor", "positive"} <= set(self.roles):
            raise ValueError(f"roles: expected anchor and positive (and optionally teacher), "
                             f"each naming one of {sorted(self.towers)}; got {self.roles}")
        if not self.frozen <= set(self.towers):
            raise ValueError(f"frozen: {sorted(self.frozen - set(self.towers))} are not towers")
        if "teacher" in self.roles and self.roles["teacher"] not in self.frozen:
            raise ValueError(f"roles: the teacher {self.roles['teacher']!r} must be a frozen tower")
        if "teacher" in self.roles:  # locked whole, a head too: its embeddings are the targets
            self.towers[self.roles["teacher"]].requires_grad_(False)
        for name in self.frozen:
            if isinstance(self.towers[name], MomentumEncoder):
                raise ValueError(f"frozen: {name} is a momentum copy (never trained already)")
            for parameter in backbone_parameters(self.towers[name]):
                parameter.requires_grad_(False)
            self.towers[name].eval()  # from the start: its cache must hold eval-mode features
        self.caches = {name: FeatureCache() for name in self.frozen}
        self.heads = _training_heads(self.towers, self.sources, dict(heads or {}))

    @classmethod
    def single(cls, tower: nn.Module, momentum: float | None = None, *,
               frozen: bool = False, head: nn.Module | None = None) -> AlignmentModel:
        """One tower for every role; with ``momentum``, positives from a momentum copy (MoCo);
        ``frozen``: its backbone locked (only its head trains); ``head``: its training head."""
        locked = [ONE_TOWER] if frozen else []
        heads = {ONE_TOWER: head} if head is not None else None
        if momentum is None:
            return cls({ONE_TOWER: tower}, {"anchor": ONE_TOWER, "positive": ONE_TOWER}, locked,
                       heads=heads)
        towers = {ONE_TOWER: tower, "momentum": MomentumEncoder(tower, momentum)}
        return cls(towers, {"anchor": ONE_TOWER, "positive": "momentum"}, locked,
                   sources={"momentum": ONE_TOWER}, heads=heads)

    # --- what embeds what -----------------------------------------------------------------

    def tower_name(self, role: str) -> str:
        """The tower that embeds ``role`` (``anchor``, ``positive``, ``view.k``,
        ``negative.k``)."""
        return self.roles[ROLE_OF[role.split(".")[0]]]

    def tower_for(self, role: str) -> Any:
        """The tower (a ``core.towers.Tower`` module, or a ``MomentumEncoder``) of ``role``."""
        return self.towers[self.tower_name(role)]

    def is_momentum(self, role: str) -> bool:
        return isinstance(self.tower_for(role), MomentumEncoder)

    def online(self) -> dict[str, Any]:
        """The towers that are not momentum copies (what a model folder holds)."""
        return {name: tower for name, tower in self.towers.items()
                if not isinstance(tower, MomentumEncoder)}

    @property
    def teacher(self) -> str | None:
        """The name of the locked tower that embeds the anchors as targets, if any."""
        return self.roles.get("teacher")

    @property
    def anchor_tower(self) -> Any:
        return self.tower_for("anchor")

    def trained_dim(self, role: str) -> int:
        """The width of ``role``'s embeddings in training (its head's, else its tower's)."""
        name = self.tower_name(role)
        head: Any = self.heads[name] if name in self.heads else None
        if isinstance(head, MomentumEncoder):
            head = head.encoder
        if head is not None:
            return int(head.out_features)
        return int(self.side(role).dim)

    def trains(self, name: str) -> bool:
        """Whether tower ``name``'s embeddings get a gradient: some of its weights or its
        training head's train, and it is not a momentum copy."""
        modules = [self.towers[name]] + ([self.heads[name]] if name in self.heads else [])
        return name not in self.sources and any(
            p.requires_grad for module in modules for p in module.parameters())

    def side(self, role: str) -> Any:
        """The online tower that embeds ``role`` for evaluation and search: a momentum copy's
        source stands for the copy."""
        name = self.tower_name(role)
        return self.towers[self.sources.get(name, name)]

    def query_side(self, indexed_by: str) -> Any:
        """The tower that embeds queries against items embedded by tower ``indexed_by``: the
        other side's (text queries against an image index), else that tower itself."""
        others = [self.side(role) for role in ("anchor", "positive")
                  if self.tower_name(role) != indexed_by]
        return others[0] if others else self.towers[indexed_by]

    def embed(self, role: str, inputs: dict[str, Tensor], keys: Tensor | None = None) -> Tensor:
        """``(n, D)``: ``inputs`` of ``role`` through its tower. A locked tower takes its
        features from the cache (by ``keys``, the rows' item ids) and computes only the missing
        ones; a momentum copy embeds without a graph."""
        name = self.tower_name(role)
        tower: Any = self.towers[name]
        if name not in self.frozen:
            embeddings = tower(inputs)  # (n, D)
        else:
            features = self.caches[name].features(tower, inputs, keys)  # (n, F), no graph
            embeddings = tower.project(features)  # the tower's head, if any, trains
        if name in self.heads:  # the training head: (n, D) -> (n, D')
            return self.heads[name](embeddings)
        return embeddings

    # --- training -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> AlignmentModel:
        super().train(mode)
        for name in self.frozen:  # a locked backbone always runs in eval mode
            self.towers[name].eval()
        return self

    def after_step(self) -> None:
        """Move every momentum copy towards its source (after each optimiser step)."""
        for copy, source in self.sources.items():
            momentum: Any = self.towers[copy]
            momentum.update(self.towers[source])
            if copy in self.heads:
                head: Any = self.heads[copy]
                head.update(self.heads[source])

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """A one-tower model: the tower's own folder. Several: a subfolder per online tower
        and a top-level ``contralign.json``, written atomically. Training heads are left
        out: the folder embeds what the towers embed."""
        online = self.online()
        if len(online) == 1:
            next(iter(online.values())).save(path, extra=extra)
            return
        with atomic_directory(path, MODEL) as tmp:
            for name, tower in online.items():
                tower.save(tmp / name)
            manifest = {"tower": MULTI_TOWER, "model": {
                "towers": {name: tower.kind for name, tower in online.items()},
                "roles": self.roles, "frozen": sorted(self.frozen)}, **(extra or {})}
            (tmp / MODEL.manifest).write_text(_json(manifest), encoding="utf-8")


def _training_heads(towers: nn.ModuleDict, sources: Mapping[str, str],
                    heads: dict[str, nn.Module]) -> nn.ModuleDict:
    """The heads by tower name, with a momentum copy of its source's head for each momentum
    copy whose source has one (the copy's momentum).

    Raises:
        ValueError: a head for a name that is not an online tower.
    """
    if not set(heads) <= set(towers) - set(sources):
        raise ValueError(f"heads: {sorted(set(heads) - (set(towers) - set(sources)))} are not "
                         "online towers (a momentum copy's head follows its source's)")
    for copy, source in sources.items():
        if source in heads:
            momentum: Any = towers[copy]
            heads[copy] = MomentumEncoder(heads[source], momentum.momentum)
    return nn.ModuleDict(heads)


def backbone_parameters(tower: nn.Module) -> list[nn.Parameter]:
    """A tower's parameters outside its projection head (what locking a tower freezes)."""
    head = getattr(tower, "head", None)
    in_head = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return [p for p in tower.parameters() if id(p) not in in_head]


class FeatureCache:
    """A locked tower's features, computed once per item (keyed by item id) and reused.

    The backbone is locked and in eval mode, so an item's features never change: every epoch
    after the first runs only the trainable side, with the loss and gradients of recomputing
    them (``tests``).
    """

    def __init__(self) -> None:
        self.rows: dict[int, Tensor] = {}

    def features(self, tower: Any, inputs: dict[str, Any], keys: Tensor | None) -> Tensor:
        """``(n, F)`` features of ``inputs``, from the cache where ``keys`` are known.

        ``inputs`` is a preprocessed batch, or ``{"items": ItemBatch}`` of raw items
        (``core.items.Deferred``): then only the missing items are preprocessed.

        Raises:
            ValueError: raw items without their ``keys``.
        """
        if keys is None:  # no item ids: compute, do not cache
            if "items" in inputs:
                raise ValueError("FeatureCache: raw items need their keys")
            with torch.no_grad():
                return tower.features(inputs)
        ids = keys.tolist()
        missing = [row for row, key in enumerate(ids) if key not in self.rows]
        if missing:
            with torch.no_grad():
                computed = tower.features(_rows_of(tower, inputs, torch.tensor(missing),
                                                   keys.device))  # (m, F)
            for row, value in zip(missing, computed, strict=True):
                self.rows[ids[row]] = value
        return torch.stack([self.rows[key] for key in ids])


def _rows_of(tower: Any, inputs: dict[str, Any], rows: Tensor, device: torch.device
             ) -> dict[str, Tensor]:
    """``rows`` of ``inputs`` as a preprocessed batch on ``device``."""
    if "items" in inputs:  # raw items: preprocess just these
        batch = tower.preprocess(inputs["items"][rows].items)
        return {name: value.to(device) for name, value in batch.items()}
    return {name: value[rows.to(value.device)] for name, value in inputs.items()}


def read_model(path: str | Path, load: Callable[[str], Any] | None = None) -> AlignmentModel:
    """A saved model of several towers (the top-level ``contralign.json`` names them); load any
    model with ``encoders.loading.load_model``. ``load`` loads one tower's folder (default
    ``load_tower``; ``load_model`` passes one for its backend).

    Raises:
        ModelNotFoundError: not a model folder of several towers.
    """
    from contralign.encoders.loading import load_tower

    load = load or load_tower
    folder = Path(path)
    manifest = read_manifest(folder, MODEL)
    spec = manifest.get("model") if manifest else None
    if not isinstance(spec, dict) or not isinstance(spec.get("towers"), dict):
        raise ModelNotFoundError(f"model: {folder}: not a model of several towers")
    towers = {name: load(str(folder / name)) for name in spec["towers"]}
    return AlignmentModel(towers, spec["roles"], spec.get("frozen", ()))


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"
