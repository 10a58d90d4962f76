"""Sweep SAE configurations for the bundled all-MiniLM-L6-v2 and pick the one to ship (issue 23, item 5).

Every configuration is trained by :func:`aquin_monitor.sae.train_sae` on the shipped SAE's corpus
(``scripts/train_default_sae.py``: 67,584 texts in 33 cache chunks of 2,048; ``--chunks`` takes a subset of the
chunks when time is short), all for the same ``--epochs`` (early stopping may end one sooner; the shipped
configuration is retrained under the same budget, so the comparison is fair at that budget), and evaluated with
the quality suite:

- on one held-out set for every SAE: the rows of the shipped SAE's own held-out split (seed 0, 5 %) among the
  chunks used; the other rows train (each run holds out 5 % of them for its early stopping):
  FVU, L0, dead and dense fractions, cos(x, x̂);
- SciFact test retrieval with reconstructed queries and documents: NDCG@10 kept (x̂ / x);
- k-sparse probing (:func:`aquin_monitor.sae.quality.k_sparse_probing`): test accuracy of a logistic
  regression on the k ∈ {1, 5, 20} best features of each class, on Banking77 intents and AG News topics.

The shipped SAE itself (``load_sae("default")``, trained for 40 epochs) is evaluated as it is as the reference
row ``shipped``; it is not a candidate.

Selection rule (decided here, the issue names its parts only):

    eligible   dead_fraction ≤ 2 % on the held-out split
    score      ½ · mean k-sparse probing accuracy (2 data sets × 3 values of k) + ½ · NDCG@10 kept
    winner     the eligible configuration with the highest score, and only if it beats the shipped
               configuration (1,536 latents, k = 32, trained under the same budget) by more than the seed
               noise: |score(seed 0) − score(seed 1)| of that configuration (both rows are in the grid), at
               least 0.005.

Each finished configuration is written to ``OUT/configs/<name>.json`` (atomic; a second run skips it, so a
cut sweep resumes, mid-configuration from ``OUT/checkpoints/<name>.pt``, and processes may share a grid with
``--only``); after each, ``OUT/sweep.json`` and
``OUT/sweep.txt`` (the table, the rule, the winner) are rewritten from all rows present.

Usage::

    HF_HUB_OFFLINE=1 python scripts/sweep_default_sae.py --out sweep/                 # the whole grid
    HF_HUB_OFFLINE=1 python scripts/sweep_default_sae.py --out sweep/ --only L2304-k32,L3072-k32
    HF_HUB_OFFLINE=1 python scripts/sweep_default_sae.py --out sweep/ --table-only    # the table of what is done
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_default_sae import SHIPPED_TEXTS, default_corpus, scifact_retrieval  # noqa: E402

from aquin_monitor.atomic import atomic_write_text  # noqa: E402

MAX_DEAD_FRACTION = 0.02
MIN_MARGIN = 0.005
PROBING_KS = (1, 5, 20)


@dataclass(frozen=True)
class SweepConfig:
    """One point of the grid: the :class:`~aquin_monitor.sae.train.SaeTrainConfig` fields that vary."""

    num_latents: int
    k: int
    auxk_coefficient: float = 1 / 32
    seed: int = 0

    @property
    def name(self) -> str:
        """``L<latents>-k<k>``, then ``-auxk<c>`` when AuxK differs from the default and ``-s<seed>`` when seed ≠ 0.

        >>> SweepConfig(3072, 32, auxk_coefficient=0.0, seed=1).name
        'L3072-k32-auxk0-s1'
        """
        name = f"L{self.num_latents}-k{self.k}"
        if self.auxk_coefficient != 1 / 32:
            name += f"-auxk{self.auxk_coefficient:g}"
        return name + (f"-s{self.seed}" if self.seed else "")


SHIPPED = SweepConfig(1536, 32)

# in the order they run (the most telling first, so a sweep cut short still answers): the shipped configuration
# and its seed replicate (the noise), then larger dictionaries and larger k, AuxK off last
DEFAULT_GRID = (
    SHIPPED,
    SweepConfig(1536, 32, seed=1),
    SweepConfig(3072, 32),
    SweepConfig(1536, 64),
    SweepConfig(2304, 48),
    SweepConfig(3072, 64),
    SweepConfig(2304, 32),
    SweepConfig(3072, 48),
    SweepConfig(3072, 32, auxk_coefficient=0.0),
    SweepConfig(1536, 64, seed=1),  # the winner's seed replicate: its seed stability (run at full budget only)
)
SHIPPED_AS_IS = "shipped"
"""The row of ``load_sae("default")`` evaluated as it is (trained 40 epochs): a reference, not a candidate."""


def probing_mean(row: Mapping[str, Any]) -> float:
    """Mean k-sparse probing accuracy of a row (NaN when it has none).

    >>> probing_mean({"probing": {"banking77": {"sae@1": 0.2, "sae@5": 0.4, "embedding": 0.9},
    ...                           "agnews": {"sae@1": 0.6, "sae@5": 0.8}}})
    0.5
    """
    values = [
        float(acc)
        for per_set in (row.get("probing") or {}).values()
        for name, acc in per_set.items()
        if name.startswith("sae@")
    ]
    return float(np.mean(values)) if values else float("nan")


def score(row: Mapping[str, Any]) -> float:
    """The selection score: ½ · mean probing accuracy + ½ · NDCG@10 kept (NDCG@10 kept alone without probing).

    >>> score({"probing": {"agnews": {"sae@1": 0.6, "sae@5": 0.8}}, "retrieval_kept": 0.9})
    0.8
    >>> score({"retrieval_kept": 0.9})
    0.9
    """
    probing = probing_mean(row)
    kept = float(row["retrieval_kept"])
    return kept if math.isnan(probing) else 0.5 * probing + 0.5 * kept


def select(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply the selection rule (module docstring) to finished rows.

    Returns:
        ``{"baseline", "noise", "margin", "best", "winner", "reason"}``: the shipped configuration's
        score, the seed noise, the margin to beat, the best eligible configuration's name and its score,
        and the winner's name (``None`` when the shipped configuration stays).

    >>> rows = [{"name": "L1536-k32", "dead_fraction": 0.0, "retrieval_kept": 0.90},
    ...         {"name": "L1536-k32-s1", "dead_fraction": 0.0, "retrieval_kept": 0.91},
    ...         {"name": "L3072-k32", "dead_fraction": 0.05, "retrieval_kept": 0.99},
    ...         {"name": "L2304-k32", "dead_fraction": 0.01, "retrieval_kept": 0.93}]
    >>> result = select(rows)
    >>> result["winner"], round(result["margin"], 3)
    ('L2304-k32', 0.01)
    """
    by_name = {row["name"]: row for row in rows}
    baseline_row, replicate = by_name.get(SHIPPED.name), by_name.get(SweepConfig(1536, 32, seed=1).name)
    baseline = score(baseline_row) if baseline_row else float("nan")
    noise = abs(baseline - score(replicate)) if baseline_row and replicate else float("nan")
    margin = max(MIN_MARGIN, noise) if not math.isnan(noise) else MIN_MARGIN
    candidates = [row for row in rows if row["name"] != SHIPPED_AS_IS and not row["name"].endswith("-s1")]
    eligible = [row for row in candidates if row["dead_fraction"] <= MAX_DEAD_FRACTION]
    best = max(eligible, key=score, default=None)
    result: dict[str, Any] = {"baseline": baseline, "noise": noise, "margin": margin, "winner": None}
    result["best"] = {"name": best["name"], "score": score(best)} if best else None
    if best is None:
        result["reason"] = f"no configuration has dead_fraction <= {MAX_DEAD_FRACTION:g}"
    elif best["name"] == SHIPPED.name or score(best) - baseline <= margin:
        result["reason"] = f"no eligible configuration beats the shipped one by more than {margin:.4f}"
    else:
        result["winner"] = best["name"]
        result["reason"] = f"{best['name']} beats the shipped one by {score(best) - baseline:.4f} > {margin:.4f}"
    return result


def evaluate_sae(
    sae: Any,
    held_out: np.ndarray,
    retrieval: Mapping[str, Any],
    probing: Callable[[Any], dict[str, dict[str, float]]] | None,
) -> dict[str, Any]:
    """The suite's numbers for one trained SAE: held-out quality, SciFact retrieval kept, probing."""
    from aquin_monitor.sae.evaluate import quality_metrics, retrieval_kept

    metrics, _ = quality_metrics(sae, held_out)
    kept = retrieval_kept(sae, retrieval["queries"], retrieval["documents"], retrieval["relevant"])
    return {
        "fvu": metrics["sae/fvu"],
        "l0": metrics["sae/l0"],
        "dead_fraction": metrics["sae/dead_fraction"],
        "dense_fraction": metrics["sae/dense_fraction"],
        "cosine": metrics["sae/cosine"],
        "retrieval_kept": kept["sae/retrieval/kept_ndcg@10"],
        "ndcg@10": kept["sae/retrieval/reconstructed/ndcg@10"],
        "probing": probing(sae) if probing else None,
    }


def run_config(
    config: SweepConfig,
    embeddings: np.ndarray,
    held_out: np.ndarray,
    evaluation: Callable[[], tuple[Mapping[str, Any], Callable[[Any], dict[str, dict[str, float]]] | None]],
    *,
    max_epochs: int,
    save_to: Path | None = None,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train one configuration on ``embeddings`` (it holds out 5 % of them for early stopping) and evaluate it on
    ``held_out`` with ``evaluation()``'s retrieval set and probing; the row of the table (with its training time).
    With ``save_to`` the SAE is written there (``cfg.json`` + ``sae.safetensors``); with ``checkpoint`` the training
    state is kept there after each epoch, and a run cut mid-configuration continues from it (the result equals an
    uninterrupted run)."""
    from aquin_monitor.sae.train import SaeTrainConfig, train_sae

    settings = SaeTrainConfig(
        num_latents=config.num_latents,
        k=config.k,
        auxk_coefficient=config.auxk_coefficient,
        seed=config.seed,
        max_epochs=max_epochs,
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_every=10**9,  # once per epoch
    )
    resumed = checkpoint is not None and checkpoint.exists()  # then train_seconds counts this call's epochs only
    start = time.perf_counter()
    result = train_sae(embeddings, settings, show_progress=False)
    train_seconds = time.perf_counter() - start
    if save_to is not None:
        result.sae.save(save_to)
    row = {"name": config.name, **asdict(config), "epochs": len(result.history)}
    row.update(best_epoch=result.sae.metadata["best_epoch"], train_seconds=round(train_seconds, 1), resumed=resumed)
    row.update(evaluate_sae(result.sae, held_out, *evaluation()))
    row["score"] = score(row)
    return row


def shipped_split(n_texts: int = SHIPPED_TEXTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row numbers ``(train, held_out)`` of the split :func:`~aquin_monitor.sae.train.train_sae` makes of
    ``n_texts`` rows with the default settings and ``seed``: the shipped SAE's split of its corpus.

    >>> train, held_out = shipped_split(1000)
    >>> len(train), len(held_out), len(np.intersect1d(train, held_out))
    (950, 50, 0)
    """
    from aquin_monitor.sae.stream import RowPlan
    from aquin_monitor.sae.train import SaeTrainConfig

    defaults = SaeTrainConfig(seed=seed)
    plan = RowPlan(n_texts, defaults.block_rows, defaults.val_fraction, seed, defaults.max_val_rows)
    parts = [
        [part.numpy() + plan.block_range(block)[0] for part in plan.split(block)] for block in range(plan.n_blocks)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def chunk_rows(chunks: Sequence[int], chunk_size: int = 2048, n_texts: int = SHIPPED_TEXTS) -> np.ndarray:
    """Row numbers of the given cache chunks of the corpus.

    >>> chunk_rows([0, 2], chunk_size=3, n_texts=8).tolist()
    [0, 1, 2, 6, 7]
    """
    return np.concatenate([np.arange(c * chunk_size, min((c + 1) * chunk_size, n_texts)) for c in chunks])


def shipped_row(
    held_out: np.ndarray,
    retrieval: Mapping[str, Any],
    probing: Callable[[Any], dict[str, dict[str, float]]] | None,
) -> dict[str, Any]:
    """The reference row :data:`SHIPPED_AS_IS`: ``load_sae("default")`` evaluated as it is on the same held-out
    rows as the candidates (rows of its own held-out split, never trained on)."""
    from aquin_monitor.sae.model import load_sae

    sae = load_sae("default")
    epochs = int(sae.metadata["best_epoch"])
    row = {"name": SHIPPED_AS_IS, **asdict(SHIPPED), "epochs": epochs, "best_epoch": epochs, "train_seconds": None}
    row.update(evaluate_sae(sae, held_out, retrieval, probing))
    row["score"] = score(row)
    return row


def format_table(rows: Sequence[Mapping[str, Any]], selection: Mapping[str, Any]) -> str:
    """The sweep table (Markdown) with the rule's outcome below it."""
    sets = sorted({name for row in rows for name in (row.get("probing") or {})})
    probe_columns = [f"{name} k={k}" for name in sets for k in PROBING_KS]
    head = ["config", "FVU", "L0", "dead %", "cos", "NDCG@10 kept", *probe_columns, "score", "epochs", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        probing = row.get("probing") or {}
        cells = [
            row["name"],
            f"{row['fvu']:.4f}",
            f"{row['l0']:.0f}",
            f"{100 * row['dead_fraction']:.1f}",
            f"{row['cosine']:.3f}",
            f"{row['retrieval_kept']:.3f}",
            *(f"{probing[name][f'sae@{k}']:.3f}" if name in probing else "–" for name in sets for k in PROBING_KS),
            f"{row['score']:.4f}",
            f"{row['best_epoch']}/{row['epochs']}",
            "shipped"
            if row["train_seconds"] is None
            else f"{row['train_seconds']:.0f}" + ("*" * row.get("resumed", 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    noise = selection["noise"]
    lines.append("")
    if any(row.get("resumed") for row in rows):
        lines.append("train s*: resumed from the configuration's checkpoint; the seconds of the resumed part only")
    lines.append(
        f"rule: dead <= {100 * MAX_DEAD_FRACTION:g} %, score = 1/2 mean probing + 1/2 NDCG@10 kept; shipped "
        f"{selection['baseline']:.4f}, seed noise {noise:.4f}, margin {selection['margin']:.4f}"
    )
    if selection.get("seed_stability") is not None:
        lines.append(f"seed stability of the shipped configuration (seeds 0, 1): {selection['seed_stability']:.3f}")
    if selection.get("winner_seed_stability") is not None:
        lines.append(f"seed stability of the winner (seeds 0, 1): {selection['winner_seed_stability']:.3f}")
    lines.append(f"winner: {selection['winner'] or 'none (the shipped SAE stays)'} ({selection['reason']})")
    return "\n".join(lines)


def replicate_stability(out: Path, config: SweepConfig = SHIPPED) -> float | None:
    """Seed stability (:func:`~aquin_monitor.sae.quality.seed_stability`) of a configuration's seeds 0 and 1
    (the shipped configuration's by default), when both SAEs are in ``OUT/saes/``."""
    from aquin_monitor.sae.model import load_sae
    from aquin_monitor.sae.quality import seed_stability

    replicate = SweepConfig(config.num_latents, config.k, config.auxk_coefficient, seed=1)
    folders = [out / "saes" / config.name, out / "saes" / replicate.name]
    if not all((folder / "sae.safetensors").exists() for folder in folders):
        return None
    return seed_stability(load_sae(folders[0]), load_sae(folders[1]))


def write_summary(out: Path, grid: Sequence[SweepConfig]) -> str:
    """Rewrite ``sweep.json`` / ``sweep.txt`` from the finished rows (grid order); return the table."""
    names = [SHIPPED_AS_IS, *(c.name for c in grid)]
    rows = [json.loads(path.read_text()) for name in names if (path := out / "configs" / f"{name}.json").exists()]
    selection = select(rows)
    selection["seed_stability"] = replicate_stability(out)
    if selection.get("winner"):
        winner = next(c for c in grid if c.name == selection["winner"])
        selection["winner_seed_stability"] = replicate_stability(out, winner)
    table = format_table(rows, selection)
    atomic_write_text(out / "sweep.json", json.dumps({"rows": rows, "selection": selection}, indent=1) + "\n")
    atomic_write_text(out / "sweep.txt", table + "\n")
    return table


def chunk_list(text: str) -> list[int]:
    """``"0-2,7"`` → ``[0, 1, 2, 7]`` (the ``--chunks`` flag).

    >>> chunk_list("0-2,7")
    [0, 1, 2, 7]
    """
    chunks: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        chunks.extend(range(int(low), int(high or low) + 1))
    if not chunks or min(chunks) < 0 or max(chunks) >= SHIPPED_TEXTS // 2048:
        raise argparse.ArgumentTypeError(f"chunks 0 to {SHIPPED_TEXTS // 2048 - 1}, e.g. 0-7,29-32")
    return sorted(set(chunks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the sweep's rows and table")
    parser.add_argument("--only", default=None, help="comma-separated configuration names of the grid")
    parser.add_argument(
        "--chunks",
        type=chunk_list,
        default=list(range(SHIPPED_TEXTS // 2048)),
        help="cache chunks (2,048 texts each) of the shipped corpus to use, e.g. 0-7,29-32 (default: all 33)",
    )
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs (early stopping on held-out FVU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-corpus", type=int, default=1000, help="SciFact documents for retrieval kept")
    parser.add_argument("--no-reference", action="store_true", help="leave the shipped SAE's row to another run")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from finished rows")
    args = parser.parse_args(argv)
    grid = list(DEFAULT_GRID)
    if args.only:
        names = {c.name: c for c in grid}
        unknown = [n for n in args.only.split(",") if n not in names]
        if unknown:
            parser.error(f"--only: unknown configuration {unknown[0]!r}; the grid: {', '.join(names)}")
        grid = [names[n] for n in args.only.split(",")]
    out = Path(args.out)
    for sub in ("configs", "saes", "checkpoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_grid(grid, out, args)
    print(write_summary(out, DEFAULT_GRID))
    return 0


def run_grid(grid: Sequence[SweepConfig], out: Path, args: argparse.Namespace) -> None:
    """Train and evaluate every configuration of ``grid`` not finished yet, writing each row.

    Rows: the texts of ``args.chunks`` (cache chunks of 2,048 texts of the shipped corpus; all 33 by default).
    Held out for every SAE alike: those of them in the shipped SAE's own held-out split; the others train.
    The SciFact and probing embeddings are loaded after the first training (another process may be filling
    the cache meanwhile).
    """
    import torch

    from aquin_monitor.sae.embeddings import embed_corpus

    torch.set_num_threads(args.threads)
    todo = [c for c in grid if not (out / "configs" / f"{c.name}.json").exists()]
    reference = out / "configs" / f"{SHIPPED_AS_IS}.json"
    if not todo and (reference.exists() or args.no_reference):
        return
    texts = default_corpus()[:SHIPPED_TEXTS]
    rows = chunk_rows(args.chunks)
    embeddings = np.concatenate(
        [
            embed_corpus("default", texts[c * 2048 : (c + 1) * 2048], chunk_size=2048, show_progress=False)
            for c in args.chunks
        ]
    )
    held_out_mask = np.isin(rows, shipped_split()[1])
    train, held_out = embeddings[~held_out_mask], embeddings[held_out_mask]
    print(f"{len(train)} training rows, {len(held_out)} held out (chunks {args.chunks})", file=sys.stderr)
    suite: list[Any] = []

    def evaluation() -> tuple[Mapping[str, Any], Callable[[Any], dict[str, dict[str, float]]]]:
        if not suite:
            suite.extend((scifact_retrieval(args.max_corpus), probing_on_shipped_sets()))
        return suite[0], suite[1]

    for config in todo:
        sae_folder, checkpoint = out / "saes" / config.name, out / "checkpoints" / f"{config.name}.pt"
        row = run_config(
            config, train, held_out, evaluation, max_epochs=args.epochs, save_to=sae_folder, checkpoint=checkpoint
        )
        row.update(n_train=len(train), n_held_out=len(held_out), chunks=list(args.chunks))
        atomic_write_text(out / "configs" / f"{config.name}.json", json.dumps(row, indent=1) + "\n")
        print(f"{config.name}: score {row['score']:.4f}, trained in {row['train_seconds']} s", file=sys.stderr)
        write_summary(out, DEFAULT_GRID)
    if not args.no_reference and not reference.exists():
        probing = probing_on_shipped_sets(references=True)
        atomic_write_text(reference, json.dumps(shipped_row(held_out, evaluation()[0], probing), indent=1) + "\n")


def probing_on_shipped_sets(*, references: bool = False) -> Callable[[Any], dict[str, dict[str, float]]]:
    """k-sparse probing of a SAE on the shipped Banking77 and AG News splits (the suite's
    :func:`~aquin_monitor.sae.probe_data.shipped_probe_splits`, embedded once, cached); with ``references`` also
    the probes on the embeddings and on the reconstructions (the shipped SAE's row has them)."""
    from aquin_monitor.sae.embeddings import embed_corpus
    from aquin_monitor.sae.probe_data import shipped_probe_splits
    from aquin_monitor.sae.quality import k_sparse_probing

    sets = [
        (
            split.name,
            embed_corpus("default", split.train_texts, chunk_size=2048, batch_size=64),
            split.train_labels,
            embed_corpus("default", split.test_texts, chunk_size=2048, batch_size=64),
            split.test_labels,
        )
        for split in shipped_probe_splits()
    ]

    def probe(sae: Any) -> dict[str, dict[str, float]]:
        return {
            name: k_sparse_probing(sae, x_train, y_train, x_test, y_test, ks=PROBING_KS, references=references)
            for name, x_train, y_train, x_test, y_test in sets
        }

    return probe


if __name__ == "__main__":
    sys.exit(main())
