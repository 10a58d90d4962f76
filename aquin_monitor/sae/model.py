"""The TopK sparse autoencoder and its folder format (EleutherAI sparsify's layout).

A TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") writes an embedding
``x`` as ``x ≈ b_dec + Σ_i z_i d_i`` with at most ``k`` non-zero ``z_i``:

    z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc)),    x̂ = W_decᵀ z + b_dec

with unit-norm decoder rows ``d_i`` (the "features"). Inputs are used exactly as the embedding
model outputs them, *not* re-normalised: the SAE must reconstruct the vectors retrieval uses, so
that "retrieval kept" compares like with like (all-MiniLM-L6-v2 already outputs unit-length
vectors). Sentence embeddings share a large common direction; ``b_dec`` starts at the data mean
so that the features spend their capacity on what differs between texts, not on that offset.

A saved SAE is a folder, loadable by ``sparsify.SparseCoder.load_from_disk`` and vice versa:

- ``cfg.json``: sparsify's ``SparseCoderConfig`` keys (``activation``, ``expansion_factor``,
  ``normalize_decoder``, ``num_latents``, ``k``, ``multi_topk``, ``skip_connection``,
  ``transcode``) plus ``d_in``; extra keys of ours (``model``, ...) are ignored by sparsify.
- ``sae.safetensors``: ``encoder.weight`` [n_latents, d_in], ``encoder.bias`` [n_latents],
  ``W_dec`` [n_latents, d_in], ``b_dec`` [d_in].

Example:

    >>> import torch
    >>> sae = SparseAutoencoder(d_in=8, num_latents=32, k=4, seed=0)
    >>> x = torch.randn(5, 8)
    >>> z = sae.encode(x)
    >>> z.shape, int((z != 0).sum(1).max()) <= 4
    (torch.Size([5, 32]), True)
    >>> sae.decode(z).shape
    torch.Size([5, 8])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ForwardOutput",
    "SaeFormatError",
    "SparseAutoencoder",
    "TopKOutput",
    "default_sae_path",
    "feature_labels",
    "load_sae",
    "sae_folder",
]

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
SPARSIFY_KEYS = (
    "activation",
    "expansion_factor",
    "normalize_decoder",
    "num_latents",
    "k",
    "multi_topk",
    "skip_connection",
    "transcode",
)


class SaeFormatError(ValueError):
    """A SAE folder that cannot be read: the message is ``file:line: field: problem``."""


class TopKOutput(NamedTuple):
    acts: Tensor
    """The k largest activations per row, [n, k] (ReLU'd, so zeros are possible)."""

    indices: Tensor
    """Their latent indices, [n, k]."""

    pre_acts: Tensor
    """All ReLU'd encoder activations before the TopK, [n, n_latents]."""


class ForwardOutput(NamedTuple):
    reconstruction: Tensor
    acts: Tensor
    indices: Tensor
    fvu: Tensor
    auxk_loss: Tensor


class _SparseTopKEncoder(torch.autograd.Function):
    """ReLU(x Wᵀ + b) then TopK, with a backward pass that touches only the k selected latents.

    Autograd would multiply a dense [n, n_latents] gradient back through the encoder twice (for
    the weights and for the input, which ``b_dec`` needs); here the input gradient is an
    embedding bag over the k selected rows (as in EleutherAI sparsify's fused encoder), and the
    AuxK gradient on the pre-activations joins the TopK gradient in one weight product.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, k: int):
        ctx.set_materialize_grads(False)
        pre_acts = F.relu(F.linear(x, weight, bias))
        acts, indices = torch.topk(pre_acts, k, dim=-1, sorted=False)
        ctx.save_for_backward(x, weight, indices, acts, pre_acts)
        ctx.mark_non_differentiable(indices)
        return acts, indices, pre_acts

    @staticmethod
    def backward(ctx, grad_acts, _grad_indices, grad_pre_acts):
        x, weight, indices, acts, pre_acts = ctx.saved_tensors
        dense = grad_pre_acts * (pre_acts > 0) if grad_pre_acts is not None else torch.zeros_like(pre_acts)
        if grad_acts is not None:
            grad_acts = grad_acts * (acts > 0)  # ReLU: no gradient where the activation is clipped
            dense.scatter_add_(1, indices, grad_acts)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if grad_pre_acts is None and grad_acts is not None:  # k rows per input instead of a matrix product
                grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad_acts, mode="sum")
            else:
                grad_x = dense @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = dense.T @ x
        if ctx.needs_input_grad[2]:
            grad_bias = dense.sum(0)
        return grad_x, grad_weight, grad_bias, None


class SparseAutoencoder(nn.Module):
    """TopK SAE on embeddings, parameter names and shapes as EleutherAI sparsify's ``SparseCoder``.

    Args:
        d_in: embedding dimension.
        num_latents: dictionary size (number of features).
        k: active features per input.
        seed: seeds the initialisation (decoder rows: random unit vectors; encoder: their
            transpose; biases zero).
        metadata: extra ``cfg.json`` entries (``model``, ``n_train_texts``, ...).
        decoder_normalized: whether the decoder rows are kept at unit norm (``cfg.json``'s
            ``normalize_decoder``). False for SAEs converted from a tied CSR (:mod:`.convert`), whose
            rows keep their trained norms: rescaling them would change which latents TopK selects.
    """

    def __init__(
        self,
        d_in: int,
        num_latents: int,
        k: int,
        *,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
        decoder_normalized: bool = True,
    ) -> None:
        super().__init__()
        if not (0 < k <= num_latents) or d_in < 1:
            raise ValueError(
                f"need 0 < k <= num_latents and d_in >= 1, got d_in={d_in}, num_latents={num_latents}, k={k}"
            )
        self.d_in, self.num_latents, self.k = int(d_in), int(num_latents), int(k)
        self.metadata = dict(metadata or {})
        self.decoder_normalized = bool(decoder_normalized)
        generator = torch.Generator().manual_seed(seed)
        decoder = torch.randn(num_latents, d_in, generator=generator)
        decoder /= decoder.norm(dim=1, keepdim=True)
        self.encoder = nn.Linear(d_in, num_latents)
        with torch.no_grad():
            self.encoder.weight.copy_(decoder)
            self.encoder.bias.zero_()
        self.W_dec = nn.Parameter(decoder.clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # ---------------------------------------------------------------- forward pieces

    def encode_topk(self, x: Tensor) -> TopKOutput:
        """The k active features of each row of ``x`` [n, d_in] (values and indices)."""
        acts, indices, pre_acts = _SparseTopKEncoder.apply(
            x - self.b_dec, self.encoder.weight, self.encoder.bias, self.k
        )
        return TopKOutput(acts, indices, pre_acts)

    def decode_topk(self, acts: Tensor, indices: Tensor) -> Tensor:
        """``W_decᵀ z + b_dec`` from the sparse form (an embedding bag over decoder rows)."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec

    def encode(self, x: Tensor) -> Tensor:
        """Dense feature activations ``z`` [n, n_latents] (at most k non-zero per row)."""
        acts, indices, pre_acts = self.encode_topk(x)
        return torch.zeros_like(pre_acts).scatter_(-1, indices, acts)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction ``x̂ = z W_dec + b_dec`` from dense activations [n, n_latents]."""
        return z @ self.W_dec + self.b_dec

    def forward(
        self,
        x: Tensor,
        *,
        dead_mask: Tensor | None = None,
        auxk_coefficient: float = 1.0,
        total_variance: Tensor | None = None,
    ) -> ForwardOutput:
        """Reconstruction, FVU of the batch and the AuxK loss (zero when no latent is dead).

        AuxK (Gao et al. 2024, appendix B.1): the ``d_in // 2`` largest pre-activations among dead
        latents reconstruct the residual ``x − x̂`` (without ``b_dec``); the loss is
        ``min(n_dead / k_aux, 1) · ‖ê − e‖² / Σ‖x − x̄‖²``, exactly as sparsify computes it.
        ``auxk_coefficient`` multiplies it (the training loss uses 1/32).

        ``total_variance`` replaces the batch's own ``Σ‖x − x̄‖²`` in both denominators: a rank of a
        data-parallel job holds a share of the global batch and divides by the global batch's variance.
        """
        acts, indices, pre_acts = self.encode_topk(x)
        reconstruction = self.decode_topk(acts, indices)
        residual = x - reconstruction
        if total_variance is None:
            total_variance = (x - x.mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        auxk = fvu.new_zeros(())
        if dead_mask is not None:
            n_dead = int(dead_mask.sum())
            if n_dead:
                k_aux = min(self.d_in // 2, n_dead)
                scale = min(n_dead / (self.d_in // 2), 1.0)
                masked = torch.where(dead_mask[None], pre_acts, torch.full_like(pre_acts, -math.inf))
                aux_acts, aux_indices = torch.topk(masked, k_aux, dim=-1, sorted=False)
                residual_hat = F.embedding_bag(aux_indices, self.W_dec, per_sample_weights=aux_acts, mode="sum")
                auxk = auxk_coefficient * scale * (residual_hat - residual.detach()).pow(2).sum() / total_variance
        return ForwardOutput(reconstruction, acts, indices, fvu, auxk)

    # ---------------------------------------------------------------- decoder constraint

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Remove from ``W_dec.grad`` each row's component along its decoder row's direction."""
        if self.W_dec.grad is not None:
            direction = F.normalize(self.W_dec, dim=1)
            parallel = (self.W_dec.grad * direction).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * direction

    # ---------------------------------------------------------------- folder format

    def config(self) -> dict[str, Any]:
        """``cfg.json`` content: sparsify's keys, ``d_in``, then our metadata."""
        cfg = {
            "activation": "topk",
            "expansion_factor": max(1, self.num_latents // self.d_in),
            "normalize_decoder": self.decoder_normalized,
            "num_latents": self.num_latents,
            "k": self.k,
            "multi_topk": False,
            "skip_connection": False,
            "transcode": False,
            "d_in": self.d_in,
        }
        cfg.update({key: value for key, value in self.metadata.items() if key not in cfg})
        return cfg

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``cfg.json`` and ``sae.safetensors`` into ``folder`` (each by an atomic rename)."""
        from safetensors.torch import save_file

        from ..atomic import atomic_path, atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(folder / CFG_NAME, json.dumps(self.config(), indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SparseAutoencoder:
        """Read a SAE folder (ours or sparsify's); every problem is one :class:`SaeFormatError` line."""
        folder = Path(folder)
        cfg = read_config(folder / CFG_NAME)
        tensors = _read_tensors(folder / WEIGHTS_NAME, cfg)
        metadata = {key: value for key, value in cfg.items() if key not in SPARSIFY_KEYS and key != "d_in"}
        sae = cls(
            cfg["d_in"],
            cfg["num_latents"],
            cfg["k"],
            metadata=metadata,
            decoder_normalized=cfg.get("normalize_decoder", True) is not False,
        )
        sae.load_state_dict({name: t.to(torch.float32) for name, t in tensors.items()})
        return sae


def read_config(path: Path) -> dict[str, Any]:
    """Validated ``cfg.json``: sizes resolved (``num_latents`` 0 means ``expansion_factor · d_in``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = ""
        if (path.parent / "config.json").is_file() or (path.parent / "modules.json").is_file():
            hint = (
                "; a sentence-transformers SparseAutoEncoder (CSR)? convert it: "
                "aquin-monitor sae convert SRC --from csr --out DIR"
            )
        raise SaeFormatError(f"{path}:0: cfg.json: missing (not a SAE folder?){hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SaeFormatError(f"{path}:0: cfg.json: unreadable: {exc}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SaeFormatError(f"{path}:{exc.lineno}: cfg.json: not valid JSON: {exc.msg}") from None
    if not isinstance(cfg, dict):
        raise SaeFormatError(f"{path}:1: cfg.json: expected a JSON object")

    def integer(name: str, minimum: int, default: Any = None) -> int:
        value = cfg.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SaeFormatError(
                f"{path}:{line_of_key(text, name)}: {name}: expected an integer >= {minimum}, got {value!r}"
            )
        return value

    cfg["d_in"] = integer("d_in", 1)
    num_latents = integer("num_latents", 0, 0) or integer("expansion_factor", 1, 32) * cfg["d_in"]
    cfg["num_latents"] = num_latents
    cfg["k"] = integer("k", 1, 32)
    if cfg["k"] > num_latents:
        raise SaeFormatError(f"{path}:{line_of_key(text, 'k')}: k: {cfg['k']} is more than num_latents {num_latents}")
    for name, supported in (("activation", "topk"), ("transcode", False), ("skip_connection", False)):
        if name in cfg and cfg[name] != supported:
            raise SaeFormatError(
                f"{path}:{line_of_key(text, name)}: {name}: only {supported!r} is supported, got {cfg[name]!r}"
            )
    for name, plain in (("sae_type", "topk"), ("mean_center", False), ("use_skip", False)):  # latentsae's keys
        if name in cfg and (str(cfg[name]).lower() if name == "sae_type" else cfg[name]) != plain:
            raise SaeFormatError(
                f"{path}:{line_of_key(text, name)}: {name}: a latentsae SAE with {name}={cfg[name]!r}; "
                "convert it first: aquin-monitor sae convert SRC --from latentsae --out DIR"
            )
    return cfg


def line_of_key(text: str, key: str) -> int:
    needle = f'"{key}"'
    for lineno, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return lineno
    return 1


def _read_tensors(path: Path, cfg: dict[str, Any]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise SaeFormatError(f"{path}:0: sae.safetensors: missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SaeFormatError(f"{path}:0: sae.safetensors: unreadable: {' '.join(str(exc).split())}") from None
    d, n = cfg["d_in"], cfg["num_latents"]
    expected = {"encoder.weight": (n, d), "encoder.bias": (n,), "W_dec": (n, d), "b_dec": (d,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise SaeFormatError(f"{path}:0: {name}: missing tensor")
        if tuple(tensors[name].shape) != shape:
            raise SaeFormatError(
                f"{path}:0: {name}: shape {tuple(tensors[name].shape)} disagrees with cfg.json "
                f"(d_in={d}, num_latents={n}: {shape})"
            )
        if not tensors[name].is_floating_point() or not torch.isfinite(tensors[name]).all():
            raise SaeFormatError(f"{path}:0: {name}: not finite floating-point values")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise SaeFormatError(
            f"{path}:0: {extra[0]}: unsupported tensor (skip connections and transcoders are not supported)"
        )
    return {name: tensors[name] for name in expected}


def default_sae_path() -> Path:
    """Folder of the SAE shipped for the bundled all-MiniLM-L6-v2."""
    return Path(__file__).resolve().parent / "default"


def sae_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder a SAE name stands for: ``"default"`` is :func:`default_sae_path`, anything else a path.

    >>> sae_folder("default") == default_sae_path(), sae_folder("runs/sae").as_posix()
    (True, 'runs/sae')
    """
    return default_sae_path() if str(name_or_path) == "default" else Path(name_or_path)


def load_sae(name_or_path: str | os.PathLike = "default") -> SparseAutoencoder:
    """Load a SAE folder; ``"default"`` is the one shipped for the bundled all-MiniLM-L6-v2.

    Args:
        name_or_path: ``"default"`` or a folder with ``cfg.json`` + ``sae.safetensors`` (ours or
            EleutherAI sparsify's).

    Returns:
        The :class:`SparseAutoencoder`, in eval mode, float32, on the CPU.

    Raises:
        SaeFormatError: missing/corrupt ``cfg.json``, tensors missing or disagreeing with it.

    Example::

        >>> sae = load_sae("default")
        >>> sae.d_in, sae.k
        (384, 64)
    """
    return SparseAutoencoder.load(sae_folder(name_or_path)).eval()


def feature_labels(name_or_path: str | os.PathLike, num_latents: int) -> list[str | None] | None:
    """Per-feature labels from a SAE folder's ``features.json`` (``label`` per feature), or None without any.

    An unreadable or malformed ``features.json`` gives None (labels are an aid, never a reason to stop);
    entries with an ``id`` outside ``0..num_latents-1`` or a non-string ``label`` are skipped.

    >>> labels = feature_labels("default", 1536)
    >>> len(labels), isinstance(labels[0], str)
    (1536, True)
    """
    try:
        record = json.loads((sae_folder(name_or_path) / "features.json").read_text(encoding="utf-8"))
        features = record["features"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    labels: list[str | None] = [None] * num_latents
    found = False
    for entry in features if isinstance(features, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int) and 0 <= entry["id"] < num_latents:
            label = entry.get("label")
            if isinstance(label, str):
                labels[entry["id"]], found = label, True
    return labels if found else None
