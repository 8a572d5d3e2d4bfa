"""Model folders in the sentence-transformers layout, plus ``contralign.json``.

Layout (what ``SentenceTransformer(path)`` reads)::

    modules.json                      Transformer -> Pooling -> [Dense] -> [Normalize]
    config_sentence_transformers.json
    sentence_bert_config.json         max_seq_length
    config.json, model.safetensors    the transformers model
    tokenizer files
    1_Pooling/config.json
    2_Dense/{config.json, model.safetensors}   when there is a projection head
    contralign.json                   our own settings and a fingerprint
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from contralign.core.errors import ModelNotFoundError
from contralign.encoders.pooling import POOLING_MODES, PoolingMode

CONTRALIGN_FILE = "contralign.json"
_ST_TYPES = "sentence_transformers.models"


@dataclass(frozen=True)
class TextEncoderConfig:
    """Settings of a text tower that are not part of the transformers model."""

    pooling: PoolingMode = "mean"
    normalize: bool = False
    max_length: int = 256
    projection_dim: int | None = None
    temperature: float | None = None


def write_st_layout(
    folder: Path, config: TextEncoderConfig, hidden_dim: int, head: torch.nn.Linear | None
) -> None:
    """Write the sentence-transformers module files of a text tower into ``folder``."""
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": f"{_ST_TYPES}.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{_ST_TYPES}.Pooling"},
    ]
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_dim,
        "pooling_mode_cls_token": config.pooling == "cls",
        "pooling_mode_mean_tokens": config.pooling == "mean",
        "pooling_mode_max_tokens": config.pooling == "max",
        "pooling_mode_lasttoken": config.pooling == "last",
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    if head is not None:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": f"{_ST_TYPES}.Dense"})
        write_json(folder / "2_Dense" / "config.json", {
            "in_features": head.in_features,
            "out_features": head.out_features,
            "bias": head.bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity",
        })
        weights = {f"linear.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(weights, str(folder / "2_Dense" / "model.safetensors"))
    if config.normalize:
        idx = len(modules)
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                        "type": f"{_ST_TYPES}.Normalize"})
        (folder / f"{idx}_Normalize").mkdir(exist_ok=True)
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": config.max_length, "do_lower_case": False})
    write_json(folder / "config_sentence_transformers.json",
                {"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None})


def write_contralign_file(folder: Path, config: TextEncoderConfig, extra: dict[str, Any]) -> None:
    write_json(folder / CONTRALIGN_FILE, {"tower": "text", **asdict(config), **extra})


def read_folder_config(folder: Path) -> tuple[TextEncoderConfig, bool]:
    """Read a folder's tower settings: ours, a sentence-transformers one, or plain transformers.

    Returns:
        The settings and whether the folder has a ``2_Dense`` projection head.

    Raises:
        ModelNotFoundError: a malformed ``contralign.json`` or ``modules.json``.
    """
    has_head = (folder / "2_Dense" / "model.safetensors").is_file()
    ours = folder / CONTRALIGN_FILE
    if ours.is_file():
        data = read_json(ours)
        fields = TextEncoderConfig.__dataclass_fields__
        return TextEncoderConfig(**{k: v for k, v in data.items() if k in fields}), has_head
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return TextEncoderConfig(), False
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in read_json(modules_file)]
    pooling: PoolingMode = "mean"
    pooling_file = folder / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        flags = read_json(pooling_file)
        for mode, key in (("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens"),
                          ("last", "pooling_mode_lasttoken"), ("mean", "pooling_mode_mean_tokens")):
            if flags.get(key):
                pooling = mode  # type: ignore[assignment]
        if flags.get("pooling_mode") in POOLING_MODES:  # newer sentence-transformers key
            pooling = flags["pooling_mode"]
    st_config = folder / "sentence_bert_config.json"
    max_length = read_json(st_config).get("max_seq_length", 256) if st_config.is_file() else 256
    config = TextEncoderConfig(pooling=pooling, normalize="Normalize" in types,
                               max_length=int(max_length or 256))
    return config, has_head and "Dense" in types


def read_stored_fingerprint(folder: Path) -> str | None:
    """The fingerprint ``contralign.json`` recorded when the folder was saved (None without)."""
    path = folder / CONTRALIGN_FILE
    if not path.is_file():
        return None
    value = read_json(path).get("fingerprint")
    return value if isinstance(value, str) else None


def load_head(folder: Path) -> torch.nn.Linear:
    """Load a ``2_Dense`` projection head (safetensors only)."""
    config = read_json(folder / "2_Dense" / "config.json")
    head = torch.nn.Linear(config["in_features"], config["out_features"], bias=config["bias"])
    weights = load_file(str(folder / "2_Dense" / "model.safetensors"))
    head.load_state_dict({k.removeprefix("linear."): v for k, v in weights.items()})
    return head


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, shapes and values: same weights, same fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelNotFoundError(f"{path}: unreadable model file ({err})") from None
