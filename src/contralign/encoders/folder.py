"""Model folders in the sentence-transformers layout, plus ``contralign.json``.

Layout (what ``SentenceTransformer(path)`` reads)::

    modules.json                      Transformer -> Pooling -> [Dense] -> [Normalize]
    config_sentence_transformers.json
    sentence_bert_config.json         max_seq_length
    config.json, model.safetensors    the transformers model
    tokenizer files
    1_Pooling/config.json
    config_sentence_transformers.json  also the prompts (``"prompts"``, ``"default_prompt_name"``)
    2_Dense/{config.json, model.safetensors}   when there is a projection head
    contralign.json                   our own settings and a fingerprint
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from contralign.core.errors import ConfigError, ModelNotFoundError
from contralign.encoders.pooling import POOLING_MODES, PoolingMode

CONTRALIGN_FILE = "contralign.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
# Settings kept in ST_CONFIG_FILE only (where sentence-transformers reads them), not in ours.
_ST_ONLY = ("prompts", "default_prompt_name")
_ST_TYPES = "sentence_transformers.models"


@dataclass(frozen=True)
class TextEncoderConfig:
    """Settings of a text tower that are not part of the transformers model.

    ``prompts`` are sentence-transformers' prompts: name -> text put in front of every input
    (e5's ``{"query": "query: ", "passage": "passage: "}``); ``default_prompt_name`` names the
    one used when the caller names none (training, preprocessing, ``encode``); None: no prompt.
    """

    pooling: PoolingMode = "mean"
    normalize: bool = False
    max_length: int = 256
    projection_dim: int | None = None
    temperature: float | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def default_prompt(self) -> str:
        """The text the default prompt puts in front of each input ("" without one)."""
        return "" if self.default_prompt_name is None else self.prompts[self.default_prompt_name]


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
    write_json(folder / ST_CONFIG_FILE, {"similarity_fn_name": "cosine",
                                         "prompts": dict(config.prompts),
                                         "default_prompt_name": config.default_prompt_name})


def write_contralign_file(folder: Path, config: TextEncoderConfig, extra: dict[str, Any]) -> None:
    settings = {k: v for k, v in asdict(config).items() if k not in _ST_ONLY}
    write_json(folder / CONTRALIGN_FILE, {"tower": "text", **settings, **extra})


def read_folder_config(folder: Path) -> tuple[TextEncoderConfig, bool]:
    """Read a folder's tower settings: ours, a sentence-transformers one, or plain transformers.

    Returns:
        The settings and whether the folder has a ``2_Dense`` projection head.

    Raises:
        ModelNotFoundError: a malformed ``contralign.json`` or ``modules.json``.
    """
    has_head = (folder / "2_Dense" / "model.safetensors").is_file()
    prompts, default_prompt_name = read_prompts(folder)
    ours = folder / CONTRALIGN_FILE
    if ours.is_file():
        data = read_json(ours)
        fields = TextEncoderConfig.__dataclass_fields__
        settings = {k: v for k, v in data.items() if k in fields and k not in _ST_ONLY}
        return TextEncoderConfig(**settings, prompts=prompts,
                                 default_prompt_name=default_prompt_name), has_head
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
                               max_length=int(max_length or 256), prompts=prompts,
                               default_prompt_name=default_prompt_name)
    return config, has_head and "Dense" in types


def read_prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """The prompts and the default prompt's name in ``config_sentence_transformers.json`` (as
    sentence-transformers reads them); none without the file.

    Raises:
        ModelNotFoundError: prompts that are not names -> texts, or a default prompt name that
            names none of them.
    """
    path = folder / ST_CONFIG_FILE
    if not path.is_file():
        return {}, None
    data = read_json(path)
    prompts = data.get("prompts") or {} if isinstance(data, dict) else {}
    default = data.get("default_prompt_name") if isinstance(data, dict) else None
    if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ModelNotFoundError(f"{path}: prompts: expected an object of names to texts")
    if default is not None and default not in prompts:
        raise ModelNotFoundError(f"{path}: default_prompt_name: {default!r} is not one of the "
                                 f"prompts ({', '.join(prompts) or 'none'})")
    return dict(prompts), default


def check_prompts(config: TextEncoderConfig, key: str = "model") -> None:
    """Raise ``ConfigError`` when ``default_prompt_name`` names none of ``prompts``."""
    name = config.default_prompt_name
    if name is not None and name not in config.prompts:
        raise ConfigError(f"{key}.default_prompt_name: {name!r} is not one of the prompts "
                          f"({', '.join(config.prompts) or 'none'})")


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
