"""Load the SAEs people already have: sentence-transformers' CSR ``SparseAutoEncoder`` and latentsae.

Each source is rewritten, exactly, as our TopK SAE (:class:`~aquin_monitor.sae.model.SparseAutoencoder`:
``z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc))``, ``x̂ = W_decᵀ z + b_dec``), so every analysis reads it:

- ``csr``: sentence-transformers' ``SparseAutoEncoder`` (Contrastive Sparse Representation, Wen et al.
  2025): ``z = ReLU(TopK_k(W (x − pre_bias) + latent_bias))``, ``x̂ = Wᵀ z + pre_bias`` with the decoder
  tied to the encoder. Mapping: ``W_enc = W``, ``b_enc = latent_bias``, ``b_dec = pre_bias`` and
  ``W_dec = W`` (a copy: the decoder is untied). TopK-then-ReLU and ReLU-then-TopK give the same dense
  code: when at least k pre-activations are positive both keep the k largest; when fewer are, both keep
  exactly the positive ones (CSR's extra picks are negative and ReLU zeroes them; ours are zeros). Only
  the padding *indices* of the sparse form differ, never a value. The decoder rows keep their trained
  norms (``normalize_decoder: false`` in ``cfg.json``): moving a row's norm into its encoder row would
  rescale that latent's pre-activation and change which latents TopK selects, so it cannot be exact.
  ``normalize: true`` (a per-input layer norm undone after decoding) has no equivalent and is refused.
  SRC is the module folder (``config.json`` + ``model.safetensors``) or a whole ``SparseEncoder``
  folder whose ``modules.json`` lists one.
- ``latentsae``: the ``latentsae`` package's ``Sae`` folder (``cfg.json`` + ``sae.safetensors``, sparsify's
  names). ``sae_type`` ``topk``, and ``matryoshka`` without BatchTopK (at inference: TopK with the largest
  level's k over all latents). ``mean_center`` (the SAE works on ``x − input_mean``) folds into
  ``b_dec + input_mean``. Skip connections and the other types (gated, JumpReLU, BatchTopK, LISTA, cosine,
  AbsTopK) encode differently and are refused.
- ``sparsify``: EleutherAI sparsify's folder, our own layout: read and checked as is.

Example:

    >>> import json, tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> src = Path(tempfile.mkdtemp())
    >>> _ = (src / "config.json").write_text(json.dumps({"input_dim": 4, "hidden_dim": 8, "k": 2}))
    >>> W = torch.randn(8, 4)
    >>> save_file({"encoder.weight": W, "pre_bias": torch.zeros(4), "latent_bias": torch.zeros(8)},
    ...           str(src / "model.safetensors"))
    >>> sae = convert_sae(src, "csr")
    >>> (sae.d_in, sae.num_latents, sae.k, sae.decoder_normalized), torch.equal(sae.W_dec, W)
    ((4, 8, 2, False), True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .convert_formats import SOURCES
from .model import SaeFormatError, SparseAutoencoder, line_of_key

__all__ = ["SOURCES", "convert_sae", "from_csr", "from_latentsae"]

CSR_TYPE_SUFFIX = "SparseAutoEncoder"
UNIT_NORM_TOLERANCE = 1e-4


def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SaeFormatError(f"{path}:0: {path.name}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SaeFormatError(f"{path}:0: {path.name}: unreadable: {exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SaeFormatError(f"{path}:{exc.lineno}: {path.name}: not valid JSON: {exc.msg}") from None
    if not isinstance(value, (dict, list)):
        raise SaeFormatError(f"{path}:1: {path.name}: expected a JSON object")
    return value, text  # type: ignore[return-value]


def _integer(cfg: dict[str, Any], text: str, path: Path, name: str, minimum: int = 1) -> int:
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SaeFormatError(
            f"{path}:{line_of_key(text, name)}: {name}: expected an integer >= {minimum}, got {value!r}"
        )
    return value


def _read_weights(folder: Path, names: tuple[str, ...]) -> tuple[Path, dict[str, Tensor]]:
    """The first of ``names`` present in ``folder``, loaded (safetensors, or a torch ``.bin`` read weights-only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in names:
        path = folder / name
        if path.is_file():
            try:
                if name.endswith(".safetensors"):
                    return path, load_file(str(path))
                return path, torch.load(path, map_location="cpu", weights_only=True)
            except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as exc:
                raise SaeFormatError(f"{path}:0: {name}: unreadable: {' '.join(str(exc).split())}") from None
    raise SaeFormatError(f"{folder / names[0]}:0: {names[0]}: missing")


def _checked(
    path: Path, tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], optional: set[str]
) -> dict[str, Tensor]:
    """``tensors`` with each expected name present, of its shape and finite; float64 copies."""
    for name, shape in expected.items():
        if name not in tensors:
            if name in optional:
                continue
            raise SaeFormatError(f"{path}:0: {name}: missing tensor")
        if tuple(tensors[name].shape) != shape:
            raise SaeFormatError(
                f"{path}:0: {name}: shape {tuple(tensors[name].shape)}, expected {shape} from the config"
            )
        if not tensors[name].is_floating_point() or not torch.isfinite(tensors[name]).all():
            raise SaeFormatError(f"{path}:0: {name}: not finite floating-point values")
    return {name: tensors[name].detach().to(torch.float64) for name in expected if name in tensors}


def _csr_module_folder(src: Path) -> Path:
    """The ``SparseAutoEncoder`` module's folder: ``src`` itself or the one ``src/modules.json`` lists."""
    if not (src / "modules.json").is_file():
        return src
    modules, _ = _read_json(src / "modules.json")
    listed: list[Any] = modules if isinstance(modules, list) else []
    found = [m for m in listed if isinstance(m, dict) and str(m.get("type", "")).endswith(CSR_TYPE_SUFFIX)]
    if len(found) != 1:
        raise SaeFormatError(
            f"{src / 'modules.json'}:1: type: expected one module of type ...{CSR_TYPE_SUFFIX}, found {len(found)}"
        )
    return src / str(found[0].get("path", ""))


def _build(
    d_in: int, num_latents: int, k: int, weights: dict[str, Tensor], metadata: dict[str, Any]
) -> SparseAutoencoder:
    norms = weights["W_dec"].norm(dim=1)
    unit = bool(torch.allclose(norms, torch.ones_like(norms), atol=UNIT_NORM_TOLERANCE, rtol=0))
    sae = SparseAutoencoder(d_in, num_latents, k, metadata=metadata, decoder_normalized=unit)
    sae.load_state_dict({name: tensor.to(torch.float32) for name, tensor in weights.items()})
    return sae.eval()


def from_csr(src: str | os.PathLike, metadata: dict[str, Any] | None = None) -> SparseAutoencoder:
    """Our SAE equal to sentence-transformers' ``SparseAutoEncoder`` saved in ``src`` (module docstring)."""
    folder = _csr_module_folder(Path(src))
    cfg_path = folder / "config.json"
    cfg, text = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise SaeFormatError(f"{cfg_path}:1: config.json: expected a JSON object")
    d, n = _integer(cfg, text, cfg_path, "input_dim"), _integer(cfg, text, cfg_path, "hidden_dim")
    k = _integer(cfg, text, cfg_path, "k")
    if k > n:
        raise SaeFormatError(f"{cfg_path}:{line_of_key(text, 'k')}: k: {k} is more than hidden_dim {n}")
    if cfg.get("normalize", False) is not False:
        raise SaeFormatError(
            f"{cfg_path}:{line_of_key(text, 'normalize')}: normalize: a per-input layer norm has no "
            "equivalent in a TopK SAE with fixed biases (only normalize=false converts)"
        )
    path, tensors = _read_weights(folder, ("model.safetensors", "pytorch_model.bin"))
    expected = {"encoder.weight": (n, d), "pre_bias": (d,), "latent_bias": (n,), "decoder.linear.weight": (n, d)}
    # the tied matrix is saved once, under either name (safetensors keeps one name of a shared tensor)
    tied = [name for name in ("encoder.weight", "decoder.linear.weight") if name in tensors]
    weights = _checked(path, tensors, expected, optional=set(tied[:1]) ^ {"encoder.weight", "decoder.linear.weight"})
    extra = sorted(set(tensors) - set(expected) - {"stats_last_nonzero"})
    if extra:
        raise SaeFormatError(f"{path}:0: {extra[0]}: unexpected tensor for a SparseAutoEncoder")
    if len(tied) == 2 and not torch.equal(weights[tied[0]], weights[tied[1]]):
        raise SaeFormatError(f"{path}:0: decoder.linear.weight: differs from encoder.weight (the CSR decoder is tied)")
    W = weights[tied[0]]
    ours = {
        "encoder.weight": W,
        "encoder.bias": weights["latent_bias"],
        "W_dec": W.clone(),
        "b_dec": weights["pre_bias"],
    }
    return _build(d, n, k, ours, {"converted_from": "csr", **(metadata or {})})


def _latentsae_k(cfg: dict[str, Any], text: str, path: Path, num_latents: int) -> int:
    """The k of a latentsae config at inference (the largest level's for matryoshka)."""
    kind = str(cfg.get("sae_type", "topk")).lower()  # latentsae writes the enum's name, "TOPK"
    if kind == "matryoshka" and not cfg.get("matryoshka_use_batchtopk", False):
        try:
            sizes = [int(s) for s in str(cfg.get("matryoshka_sizes", "")).split(",") if s.strip()]
            ks = [int(s) for s in str(cfg.get("matryoshka_ks", "")).split(",") if s.strip()]
        except ValueError:
            sizes = ks = []
        if not ks or len(ks) != len(sizes) or sizes[-1] != num_latents or not 0 < ks[-1] <= num_latents:
            raise SaeFormatError(
                f"{path}:{line_of_key(text, 'matryoshka_ks')}: matryoshka_ks: expected k per level, "
                f"the last level of num_latents {num_latents} latents"
            )
        return ks[-1]
    if kind != "topk":
        raise SaeFormatError(
            f"{path}:{line_of_key(text, 'sae_type')}: sae_type: only topk and matryoshka (without "
            f"BatchTopK) encode as a TopK SAE, got {kind!r}"
        )
    k = _integer(cfg, text, path, "k")
    if k > num_latents:
        raise SaeFormatError(f"{path}:{line_of_key(text, 'k')}: k: {k} is more than num_latents {num_latents}")
    return k


def from_latentsae(src: str | os.PathLike, metadata: dict[str, Any] | None = None) -> SparseAutoencoder:
    """Our SAE equal to a ``latentsae.Sae`` saved in ``src`` by ``save_to_disk`` (module docstring)."""
    folder = Path(src)
    cfg_path = folder / "cfg.json"
    cfg, text = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise SaeFormatError(f"{cfg_path}:1: cfg.json: expected a JSON object")
    if cfg.get("use_skip", False):
        raise SaeFormatError(
            f"{cfg_path}:{line_of_key(text, 'use_skip')}: use_skip: a skip connection has no equivalent in a TopK SAE"
        )
    d = _integer(cfg, text, cfg_path, "d_in")
    n = cfg.get("num_latents") or _integer(cfg, text, cfg_path, "expansion_factor") * d
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SaeFormatError(
            f"{cfg_path}:{line_of_key(text, 'num_latents')}: num_latents: expected an integer >= 0, got {n!r}"
        )
    k = _latentsae_k(cfg, text, cfg_path, n)
    path, tensors = _read_weights(folder, ("sae.safetensors",))
    expected = {"encoder.weight": (n, d), "encoder.bias": (n,), "W_dec": (n, d), "b_dec": (d,), "input_mean": (d,)}
    weights = _checked(path, tensors, expected, optional={"input_mean"})
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise SaeFormatError(f"{path}:0: {extra[0]}: unexpected tensor for a TopK latentsae SAE")
    input_mean = weights.pop("input_mean", torch.zeros(d, dtype=torch.float64))
    weights["b_dec"] = weights["b_dec"] + input_mean  # (x − μ) − b = x − (b + μ); decode adds both back
    return _build(d, n, k, weights, {"converted_from": "latentsae", **(metadata or {})})


def convert_sae(src: str | os.PathLike, source: str, *, model: str | None = None) -> SparseAutoencoder:
    """The SAE in ``src`` (of format ``source``, one of :data:`SOURCES`) as our :class:`SparseAutoencoder`.

    ``model`` (the embedding model the SAE reads) is recorded in the metadata, as ``sae train`` records it.
    Raises :class:`~aquin_monitor.sae.model.SaeFormatError` (``file:line: field: problem``) on anything
    that does not convert exactly.
    """
    if source not in SOURCES:
        raise ValueError(f"--from: expected one of {', '.join(SOURCES)}, got {source!r}")
    folder = Path(src)
    if not folder.is_dir():
        raise SaeFormatError(f"{folder}:0: SRC: not a folder")
    metadata = {"model": model} if model else {}
    if source == "csr":
        return from_csr(folder, metadata)
    if source == "latentsae":
        return from_latentsae(folder, metadata)
    sae = SparseAutoencoder.load(folder).eval()
    sae.metadata.update(metadata)
    return sae
