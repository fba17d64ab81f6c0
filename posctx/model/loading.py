"""Loading a model and its tokenizer, checked, with what the store's provenance records.

:func:`load_model` resolves the name (:mod:`posctx.model.resolve`), refuses devices, files
and layers it cannot use with one line of advice, and returns a :class:`LoadedModel`: the
model, its tokenizer, its special-token framing (:func:`special_tokens`) and the hash of its
weights. torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posctx.config import ModelConfig
from posctx.errors import ModelError
from posctx.model.resolve import MINILM, MINILM_ID, resolve_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Models whose learned position table reserves the first pad_token_id + 1 rows.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer"}


@dataclass(frozen=True)
class SpecialTokens:
    """How a context of T tokens is framed: ``prefix + content + suffix``.

    ``separator_ids`` are placed between documents inside one topic's token stream; they are
    ordinary text tokens (never [SEP]/BOS), so no special token lands mid-context.
    """

    policy: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    prefix_tokens: tuple[str, ...]
    suffix_tokens: tuple[str, ...]
    separator_ids: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "prefix_ids": list(self.prefix_ids),
            "suffix_ids": list(self.suffix_ids),
            "prefix_tokens": list(self.prefix_tokens),
            "suffix_tokens": list(self.suffix_tokens),
            "separator_ids": list(self.separator_ids),
        }


@dataclass
class LoadedModel:
    """A model ready for :func:`forward_hidden`, with everything provenance needs."""

    model: Any
    tokenizer: Any
    config: ModelConfig
    path: str
    n_hidden_states: int
    layers: tuple[int, ...]
    layer_names: tuple[str, ...]
    hidden_size: int
    max_positions: int | None
    special: SpecialTokens
    weights_hash: str
    #: With ``final_norm="before"``: the final norm whose input replaces the last hidden state.
    final_norm: Any = None
    #: The attribute name of the model's final norm, if it has one (recorded).
    final_norm_name: str | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each of ``texts`` without special tokens, in one tokenizer call (a
        fast tokenizer encodes a batch in parallel)."""
        if not texts:
            return []
        out = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [list(ids) for ids in out]

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model as loaded (stored in the store's attrs)."""
        import torch
        import transformers

        cfg = self.model.config
        return {
            "name": self.config.name,
            "hf_id": MINILM_ID if self.config.name == MINILM else self.config.name,
            "path": self.path,
            "architecture": type(self.model).__name__,
            "model_type": getattr(cfg, "model_type", None),
            "is_decoder": _is_decoder(self.model),
            "weights_hash": self.weights_hash,
            "n_hidden_states": self.n_hidden_states,
            "hidden_size": self.hidden_size,
            "max_positions": self.max_positions,
            "vocab_size": getattr(cfg, "vocab_size", None),
            "dtype": self.config.dtype,
            "device": self.config.device,
            "attn_implementation": getattr(cfg, "_attn_implementation", None),
            "batch_size": self.config.batch_size,
            "final_norm": self.final_norm_name,
            "tokenizer": type(self.tokenizer).__name__,
            "special_tokens": self.special.to_dict(),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        }


def _is_decoder(model: Any) -> bool:
    cfg = model.config
    if getattr(cfg, "is_decoder", False):
        return True
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    return "CausalLM" in archs or getattr(cfg, "model_type", "") in {
        "gpt2",
        "gpt_neo",
        "gptj",
        "gpt_neox",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "opt",
        "phi",
        "phi3",
        "gemma",
        "gemma2",
        "falcon",
        "bloom",
        "olmo",
        "pythia",
    }


def _max_positions(model: Any) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            if getattr(cfg, "model_type", "") in _OFFSET_POSITION_MODELS:
                value -= (getattr(cfg, "pad_token_id", 1) or 1) + 1
            return value
    return None


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def weights_hash(model: Any) -> str:
    """BLAKE2b of every parameter and buffer in name order, as loaded (dtype included)."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def special_tokens(tokenizer: Any, policy: str) -> SpecialTokens:
    """Find the prefix/suffix the tokenizer adds around text, by encoding a probe both ways."""
    probe = "posctx probe text"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    separator = tuple(tokenizer("\n\n", add_special_tokens=False)["input_ids"])
    if policy == "none":
        return SpecialTokens("none", (), (), (), (), separator)
    framed = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    start = next(
        (i for i in range(len(framed) - len(plain) + 1) if framed[i : i + len(plain)] == plain),
        None,
    )
    if start is None:
        raise ModelError(
            f"cannot locate text tokens inside the tokenizer's special-token framing {framed}: "
            "use --special-tokens none"
        )
    prefix = tuple(framed[:start])
    suffix = tuple(framed[start + len(plain) :])
    return SpecialTokens(
        "model",
        prefix,
        suffix,
        tuple(tokenizer.convert_ids_to_tokens(list(prefix))),
        tuple(tokenizer.convert_ids_to_tokens(list(suffix))),
        separator,
    )


def check_device(name: str) -> torch.device:
    """The torch device ``name``; refused before any loading if torch or this machine lacks it.

    Raises
    ------
    ModelError
        torch knows no such device type, or the CUDA/MPS device is not present here.
    """
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"device {name!r} is not a device torch knows ({first}): use --device cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            if count == 0:
                have = "no usable CUDA GPU"
            elif count == 1:
                have = "1 CUDA device (cuda:0)"
            else:
                have = f"{count} CUDA devices (cuda:0..cuda:{count - 1})"
            also = " or --device cuda:0" if count else ""
            raise ModelError(
                f"device {name!r} is not available: this machine has {have}: use --device cpu{also}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(
            f"device {name!r} is not available (no Apple GPU, or torch built without MPS): "
            "use --device cpu"
        )
    return device


def _check_local_model(name: str, path: str) -> None:
    """Refuse a local path that cannot be a model folder, before transformers guesses why."""
    local = Path(path).expanduser()
    if local.is_file():
        raise ModelError(
            f"model {name!r} is a file, not a model folder: pass the folder that holds it "
            "(config.json, the weights and the tokenizer files)"
        )
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelError(
            f"model {name!r} is not a model folder (no config.json in {local}): pass a folder "
            "saved with save_pretrained (config.json, weights, tokenizer files), 'minilm', or a "
            "HuggingFace id"
        )


def _damaged_weights_errors() -> tuple[type[BaseException], ...]:
    """The exception types that reading a truncated or corrupt weights file raises."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - transformers requires safetensors
        return ()
    return (SafetensorError,)


def _hub_offline() -> bool:
    """Whether hub downloads are switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _offline_message(name: str) -> str:
    return (
        f"cannot load model {name!r}: it is not available locally and downloads "
        "are off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): run "
        f"`hf download {name}` where the hub is reachable and use that HF_HOME "
        "cache here, unset the variable, or pass 'minilm' or a local model folder"
    )


def _check_hub_name(name: str, path: str) -> None:
    """Refuse a name that is no local path and no loadable hub id, without reading the hub."""
    if Path(path).expanduser().exists():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except ValueError as exc:  # HFValidationError: not of the form NAME or ORG/NAME
        raise ModelError(
            f"model {name!r} is neither an existing local folder (no such path) nor a valid "
            "HuggingFace id (NAME or ORG/NAME): check the path, or pass 'minilm' or a hub id"
        ) from exc
    if _hub_offline() and not isinstance(cached, str):
        raise ModelError(_offline_message(name))


def check_loadable(config: ModelConfig) -> None:
    """Refuse a model that cannot load, before any of its files is read.

    Checks what can be known without loading: the device (:func:`check_device`), that a
    local path is a model folder, that a name which is no local path is a valid hub id, and,
    while hub downloads are off, that the hub id is in the local cache. :func:`load_model`
    runs these checks first; call this to refuse several models before loading any.

    Raises
    ------
    ModelError
        With the same message :func:`load_model` gives for that problem.
    """
    _preflight(config)


def _preflight(config: ModelConfig) -> tuple[torch.device, str]:
    device = check_device(config.device)  # before the weights load, not after
    path = resolve_model(config.name)
    _check_local_model(config.name, path)
    _check_hub_name(config.name, path)
    return device, path


def load_model(config: ModelConfig) -> LoadedModel:
    """Load tokenizer and model for hidden-state extraction.

    Parameters
    ----------
    config
        Which model, dtype, device, layers and special-token policy.

    Raises
    ------
    ModelError
        The name is neither a local model folder nor reachable on the hub (what can be known
        without reading a model file is checked first: :func:`check_loadable`), the architecture
        has no hidden states to return, or the requested layers do not exist.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not initialised" chatter is not for our users
    hf_logging.disable_progress_bar()
    device, path = _preflight(config)  # device, local folder, hub id: before any file is read
    damaged_weights = _damaged_weights_errors()
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(config.dtype)}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, **kwargs)
    except damaged_weights as exc:  # a truncated download or copy of the weights file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load model {config.name!r}: a weights file is damaged or incomplete ({first}), "
            "as an interrupted download or copy leaves it: download or copy the model again"
        ) from exc
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # An unknown implementation is a ValueError naming attn_implementation; a known one whose
        # package is missing (flash_attention_2 without flash-attn) an ImportError naming it.
        missing_package = isinstance(exc, ImportError)
        if config.attn_implementation and (
            "attn_implementation" in str(exc)
            or (missing_package and "attention" in str(exc).lower())
        ):
            raise ModelError(
                f"attention implementation {config.attn_implementation!r} is not available for "
                f"model {config.name!r} ({first[:200]}): use --attn-implementation eager or sdpa, "
                "or leave the option out"
            ) from exc
        if missing_package:
            raise  # another package the model or tokenizer needs: transformers' message names it
        if not Path(path).exists() and _hub_offline():
            raise ModelError(_offline_message(config.name)) from exc
        raise ModelError(
            f"cannot load model {config.name!r} ({first}): pass 'minilm', a local model "
            "directory, or a HuggingFace id on a machine that can reach the hub"
        ) from exc
    if getattr(model.config, "is_encoder_decoder", False):
        raise ModelError(
            f"model {config.name!r} is an encoder-decoder; posctx extracts encoder-only or "
            "decoder-only models"
        )
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(
            f"device {config.device!r} is not usable here ({exc}): use --device cpu"
        ) from exc
    model.eval()
    n_hidden = (
        int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
        + 1
    )
    layers = tuple(config.layers) or tuple(range(n_hidden))
    bad = [layer for layer in layers if layer >= n_hidden]
    if bad:
        raise ModelError(
            f"layers {bad} do not exist: {config.name!r} has hidden states 0..{n_hidden - 1} "
            f"(0 = embedding output): pick --layers from 0..{n_hidden - 1}, or leave it out for all"
        )
    final_norm, norm_name = _final_norm(model)
    if config.final_norm == "before" and final_norm is None:
        raise ModelError(
            f"model {config.name!r} has no final norm after its last block (its last hidden "
            "state is that block's output already): drop --final-norm before"
        )
    names = tuple(
        layer_name(i, n_hidden, final_norm is not None, config.final_norm) for i in layers
    )
    hidden_size = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "n_embd", 0))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        path=path,
        n_hidden_states=n_hidden,
        layers=layers,
        layer_names=names,
        hidden_size=hidden_size,
        max_positions=_max_positions(model),
        special=special_tokens(tokenizer, config.special_tokens),
        weights_hash=weights_hash(model),
        final_norm=final_norm if config.final_norm == "before" else None,
        final_norm_name=norm_name,
    )


#: Attribute names of a decoder's final norm, in HF's base models (GPT-2 and GPT-J ``ln_f``,
#: Llama, Mistral, Qwen and Gemma ``norm``, OPT ``final_layer_norm``, GPT-NeoX
#: ``final_layer_norm``, Falcon ``ln_f``, Mamba-style ``norm_f``).
_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "norm_f")


def _final_norm(model: Any) -> tuple[Any, str | None]:
    """A decoder's norm applied after its last block (and to HF's last hidden state), and its
    attribute name; ``(None, None)`` for models without one."""
    import torch

    if not _is_decoder(model):
        return None, None
    owners = [model, getattr(model, "decoder", None)]  # OPT keeps its blocks in .decoder
    for owner in owners:
        for name in _FINAL_NORMS:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return module, name
    return None, None


def layer_name(index: int, n_hidden: int, final_norm: bool, where: str = "after") -> str:
    """The name of hidden state ``index``: ``embeddings``, ``block_k``, and for a decoder's
    last one taken after its final norm, ``block_L+final_norm``.

    >>> [layer_name(i, 3, True) for i in range(3)]
    ['embeddings', 'block_1', 'block_2+final_norm']
    >>> layer_name(2, 3, True, "before"), layer_name(2, 3, False)
    ('block_2', 'block_2')
    """
    if index == 0:
        return "embeddings"
    if final_norm and where == "after" and index == n_hidden - 1:
        return f"block_{index}+final_norm"
    return f"block_{index}"


def check_length(loaded: LoadedModel, length: int) -> None:
    """Refuse a context length the model cannot embed."""
    if loaded.max_positions is not None and length > loaded.max_positions:
        raise ModelError(
            f"--length {length} exceeds the {loaded.max_positions} positions model "
            f"{loaded.config.name!r} supports: use --length {loaded.max_positions} or less"
        )


__all__ = [
    "LoadedModel",
    "SpecialTokens",
    "check_device",
    "check_length",
    "check_loadable",
    "layer_name",
    "load_model",
    "special_tokens",
    "weights_hash",
]
