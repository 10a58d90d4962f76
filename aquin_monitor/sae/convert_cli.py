"""``aquin-monitor sae convert``: rewrite a CSR, latentsae or sparsify SAE as an aquin-monitor SAE folder.

SRC is read and checked in full (one ``file:line: field: problem`` line, exit status 2) before OUT is
written; OUT gets ``cfg.json`` and ``sae.safetensors`` by atomic renames. No model is loaded.

Examples::

    aquin-monitor sae convert my-csr-model --from csr --out sae/csr --model sentence-transformers/all-MiniLM-L6-v2
    aquin-monitor sae convert latentsae/64_32 --from latentsae --out sae/latent --json -
"""

from __future__ import annotations

import argparse
from typing import Any

from ..cli_tools import declare_outputs, emit
from .convert_formats import SOURCES

__all__ = ["add_convert_command"]


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    from .convert import convert_sae

    sae = convert_sae(args.src, args.source, model=args.model)
    sae.save(args.out)
    norms = sae.W_dec.detach().norm(dim=1)
    result = {
        "source": args.src,
        "format": args.source,
        "out": args.out,
        "d_in": sae.d_in,
        "num_latents": sae.num_latents,
        "k": sae.k,
        "decoder_normalized": sae.decoder_normalized,
        "decoder_norm_min": float(norms.min()),
        "decoder_norm_max": float(norms.max()),
        "model": sae.metadata.get("model"),
    }
    emit(
        result,
        args.json,
        [
            f"{args.source} SAE {args.src} -> {args.out}: d_in {sae.d_in}, {sae.num_latents} latents, k {sae.k}",
            f"decoder row norms {result['decoder_norm_min']:.4g}..{result['decoder_norm_max']:.4g}"
            + ("" if sae.decoder_normalized else " (kept as trained: normalize_decoder false)"),
        ]
        + ([] if args.model else ["no --model given: pass --model to the analyses, or convert again with it"]),
    )
    return result


def add_convert_command(commands: Any) -> None:
    """Add ``convert`` to the ``aquin-monitor sae`` sub-command group ``commands``."""
    convert = commands.add_parser(
        "convert",
        help="load a CSR (sentence-transformers), latentsae or sparsify SAE",
        description="Rewrite SRC as an aquin-monitor SAE folder with the same codes and "
        "reconstructions: csr = sentence-transformers' SparseAutoEncoder (a module folder or a "
        "SparseEncoder folder), latentsae = latentsae's Sae.save_to_disk, sparsify = EleutherAI sparsify.",
    )
    convert.add_argument("src", metavar="SRC", help="the SAE folder to convert")
    convert.add_argument("--from", dest="source", required=True, choices=SOURCES, help="the format of SRC")
    convert.add_argument("--out", required=True, metavar="DIR", help="folder to write the converted SAE into")
    convert.add_argument("--model", default=None, help="embedding model the SAE reads, recorded in cfg.json")
    convert.add_argument(
        "--json", metavar="OUT", help="also write the summary as JSON to OUT ('-': JSON on stdout, no table)"
    )
    convert.set_defaults(handler=_convert)
    declare_outputs(convert, folders=["--out"], files=["--json"])
