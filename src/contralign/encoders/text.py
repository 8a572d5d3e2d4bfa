"""``TextEncoder``: a transformers model with pooling, an optional projection head and
optional normalisation, saved as a sentence-transformers folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contralign.core.errors import ConfigError, ModelNotFoundError
from contralign.core.io import atomic_directory
from contralign.core.outputs import MODEL
from contralign.core.towers import StoredFingerprint
from contralign.encoders.folder import (
    TextEncoderConfig,
    check_prompts,
    load_head,
    read_folder_config,
    read_stored_fingerprint,
    weights_fingerprint,
    write_contralign_file,
    write_st_layout,
)
from contralign.encoders.lengths import length_groups, pad_rows, take_rows, trim_padding
from contralign.encoders.pooling import pool, project
from contralign.encoders.resolve import DEFAULT_MODEL, not_found_message, resolve_model

# Above this many texts, encode() shows a progress bar unless told otherwise.
PROGRESS_THRESHOLD = 1000


@dataclass(frozen=True)
class TextPreprocessor:
    """Texts -> ``input_ids``, ``attention_mask`` (and the model's other inputs) ``(B, T)``:
    ``prompt`` put in front of each text, padded to the longest, truncated to ``max_length``.
    Picklable (DataLoader workers), prompt included."""

    tokenizer: Any
    max_length: int
    prompt: str = ""

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return dict(self.tokenizer(self.prompted(texts), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))

    def prompted(self, texts: Sequence[str]) -> list[str]:
        """The texts with the prompt in front (sentence-transformers' ``prompt + text``)."""
        return [self.prompt + text for text in texts] if self.prompt else list(texts)

    def tokenize(self, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        """Each text's model inputs, prompt in front, truncated, not padded: ``encode`` sorts
        texts by these lengths and ``pad`` batches them, so each text is tokenized once."""
        return dict(self.tokenizer(self.prompted(texts), truncation=True,
                                   max_length=self.max_length))

    def pad(self, tokens: dict[str, list[list[int]]], rows: Sequence[int] | np.ndarray
            ) -> dict[str, Tensor]:
        """``rows`` of ``tokenize``'s output as a batch ``(B, T)``, padded to its longest row:
        what calling the preprocessor on those texts gives (the tokenizer's pad token, pad token
        type and padding side; mask 0 on padding), without tokenizing them again."""
        fills = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0,
                 "token_type_ids": self.tokenizer.pad_token_type_id}
        picked = {name: [values[i] for i in rows] for name, values in tokens.items()}
        if set(picked) - set(fills) or fills["input_ids"] is None:
            # inputs this padder does not know, or no pad token: the tokenizer's own (slower) pad
            return dict(self.tokenizer.pad(picked, return_tensors="pt"))
        width = max((len(row) for row in picked["input_ids"]), default=0)
        left = self.tokenizer.padding_side == "left"
        return {name: torch.from_numpy(pad_rows(values, width, fills[name], left))
                for name, values in picked.items()}


class TextEncoder(nn.Module):
    """A text tower: tokenizer + transformers model + pooling (+ head) (+ L2 normalisation).

    The ``core.towers.Tower`` of kind ``text``: ``features`` is the pooled output of the model,
    ``project`` the head and the normalisation.

    Args:
        model: a transformers ``PreTrainedModel`` whose output has ``last_hidden_state``.
        tokenizer: the matching (fast) tokenizer.
        config: pooling, normalisation, maximum length and head size.
        head: an optional linear projection ``hidden -> projection_dim``.
    """

    def __init__(
        self, model: Any, tokenizer: Any, config: TextEncoderConfig, head: nn.Linear | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        if head is None and config.projection_dim is not None:
            head = nn.Linear(model.config.hidden_size, config.projection_dim, bias=False)
        self.head = head
        # Rows x longest row of one length group in forward; None: the batch in one pass. A
        # run-time setting of the trainer (``train.tokens_per_group``), not saved.
        self.tokens_per_group: int | None = None
        check_prompts(config)
        self.preprocessor = TextPreprocessor(tokenizer, config.max_length, config.default_prompt)
        self.stored_fingerprint = StoredFingerprint()

    kind = "text"
    modality = "text"

    @property
    def dim(self) -> int:
        return self.head.out_features if self.head is not None else self.model.config.hidden_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        *,
        trust_remote_code: bool = False,
        **overrides: Any,
    ) -> TextEncoder:
        """Load a local folder, an installed model package, or a hub id (see DESIGN.md).

        ``overrides`` replace folder settings: ``pooling``, ``normalize``, ``max_length``,
        ``projection_dim``, ``prompts``, ``default_prompt_name``.

        Raises:
            ModelNotFoundError: nothing loadable under that name (one-line message).
            ConfigError: a ``max_length`` override beyond the model's position embeddings.
        """
        from transformers import AutoModel, AutoTokenizer

        source = resolve_model(name_or_path)
        folder = Path(source)
        config, has_head = (
            read_folder_config(folder) if folder.is_dir() else (TextEncoderConfig(), False)
        )
        head = load_head(folder) if has_head else None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(
                source, use_safetensors=True, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            if folder.is_dir():
                raise ModelNotFoundError(f"model: {source}: cannot load ({err})") from None
            raise ModelNotFoundError(not_found_message(name_or_path)) from None
        if overrides:
            new_dim = overrides.get("projection_dim", config.projection_dim)
            if new_dim != config.projection_dim:
                head = None  # a new head size means a new, freshly initialised head
            config = dataclasses.replace(config, **overrides)
        positions = getattr(model.config, "max_position_embeddings", None)
        max_length = overrides.get("max_length")
        if isinstance(positions, int) and max_length is not None and max_length > positions:
            raise ConfigError(f"model.max_length: {max_length} exceeds the {positions} positions "
                              f"of {name_or_path}")
        encoder = cls(model, tokenizer, config, head)
        if not overrides and folder.is_dir():
            encoder.stored_fingerprint.set(encoder, read_stored_fingerprint(folder))
        return encoder

    # --- Tower protocol -------------------------------------------------------------------

    def preprocess(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Put the default prompt in front, tokenize, pad to the longest and truncate to
        ``max_length``."""
        return self.preprocessor(texts)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Embed a tokenized batch: ``(B, D)``."""
        return self.project(self.features(batch))

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, H)``: the model's output pooled over each row's tokens.

        A right-padded batch is first trimmed to its longest row. With ``tokens_per_group``
        set, its rows are then embedded in length-sorted groups, each trimmed to its own longest
        row (``encoders.lengths``): the same embeddings, fewer padded positions.
        """
        groups = None
        if self.tokenizer.padding_side == "right":
            batch = trim_padding(batch)  # rows of a larger batch (a chunk) need not its width
            if self.tokens_per_group is not None:
                groups = length_groups(batch["attention_mask"], self.tokens_per_group)
        return self._pooled(batch) if groups is None else self._pooled_in_groups(batch, groups)

    def project(self, features: Tensor) -> Tensor:
        """``(B, D)``: the head (if any) and the L2 normalisation (if on) of ``features``."""
        return project(features, self.head, bool(self.config.normalize))

    def _pooled_in_groups(self, batch: dict[str, Tensor], groups: list[Tensor]) -> Tensor:
        """``(B, H)``: each group of rows pooled on its own, trimmed to its longest row."""
        lengths = batch["attention_mask"].sum(dim=1)  # (B,)
        # Look the tokens up once for the whole batch: the table's gradient is a dense
        # (vocabulary, H) tensor per lookup, and filling one per group cost more than a tenth of
        # a MiniLM step. Each group's forward then takes its rows of this lookup (a forward hook
        # replaces the layer's output), so everything after the lookup runs as the model has it.
        embedding_layer = self.model.get_input_embeddings()
        looked_up = embedding_layer(batch["input_ids"])  # (B, T, H)
        parts = []
        for rows in groups:
            width = max(int(lengths[rows[0]]), 1)
            group_lookup = looked_up[rows, :width]  # (n_g, width, H)
            handle = embedding_layer.register_forward_hook(  # a lookup of other ids: kept
                lambda module, args, output, value=group_lookup:
                    value if output.shape == value.shape else None)
            try:
                parts.append(self._pooled(take_rows(batch, rows, width)))
            finally:
                handle.remove()
        # (B, H) back in the batch's row order: row groups[g][j] is parts[g][j].
        return torch.cat(parts)[torch.cat(groups).argsort()]

    def _pooled(self, batch: dict[str, Tensor]) -> Tensor:
        output = self.model(**batch)
        return pool(output.last_hidden_state, batch["attention_mask"], self.config.pooling)

    # --- inference ------------------------------------------------------------------------

    def prompt(self, prompt_name: str | None = None) -> str:
        """The text of the prompt ``prompt_name`` (None: the default prompt, "" without one).

        Raises:
            ConfigError: the tower has no prompt of that name.
        """
        if prompt_name is None:
            return self.config.default_prompt
        if prompt_name not in self.config.prompts:
            raise ConfigError(f"prompt_name: {prompt_name!r} is not a prompt of this tower (it "
                              f"has: {', '.join(self.config.prompts) or 'none'})")
        return self.config.prompts[prompt_name]

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None,
        prompt_name: str | None = None,
    ) -> np.ndarray:
        """Embed texts as a float32 array ``(N, D)`` in input order.

        Each text gets the prompt ``prompt_name`` in front (None: the default prompt, as
        sentence-transformers does). Texts are tokenized once, sorted by token count and batched,
        so each batch pads little.

        Raises:
            ConfigError: ``prompt_name`` names no prompt of the tower.
        """
        texts = list(texts)
        preprocessor = dataclasses.replace(self.preprocessor, prompt=self.prompt(prompt_name))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        tokens = preprocessor.tokenize(texts)
        order = np.argsort([-len(ids) for ids in tokens["input_ids"]], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        show = len(texts) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        starts = range(0, len(texts), batch_size)
        for start in _progress(starts, show, "Encoding"):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in preprocessor.pad(tokens, idx).items()}
            out[idx] = self(batch).float().cpu().numpy()
        self.train(was_training)
        return out

    # --- persistence ----------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash of the weights and settings: two encoders with equal fingerprints embed alike.
        Read from ``contralign.json`` at load; computed again only after the weights changed."""
        return self.stored_fingerprint.get(self, self._compute_fingerprint)

    def _compute_fingerprint(self) -> str:
        state = {f"w.{k}": v for k, v in self.state_dict().items()}
        return f"{weights_fingerprint(state)}-{hash_config(self.config)}"

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a sentence-transformers folder (safetensors) + ``contralign.json``, atomically."""
        with atomic_directory(path, MODEL) as tmp:
            self.write_folder(tmp, extra)

    def write_folder(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """Write the folder's files into ``folder`` (a fresh one: ``save`` makes it atomic)."""
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        write_st_layout(folder, self.config, self.model.config.hidden_size, self.head)
        write_contralign_file(folder, self.config,
                              {"fingerprint": self.fingerprint(), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path) -> TextEncoder:
        return cls.from_pretrained(str(path))


def hash_config(config: TextEncoderConfig) -> str:
    import hashlib

    settings = dataclasses.asdict(config)
    if not config.prompts and config.default_prompt_name is None:
        # Towers without prompts hash as before prompts existed: their fingerprints still hold.
        del settings["prompts"], settings["default_prompt_name"]
    text = repr(sorted(settings.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _progress(items: range, show: bool, label: str) -> Any:
    if not show:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)
