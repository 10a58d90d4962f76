"""What a researcher asks of a SAE beyond reconstruction: do its features carry labels, are they stable across
seeds, does it beat a PCA of the same size, and does it fit *this* corpus as well as its own held-out data.

Definitions (the ``sae eval`` numbers; ``docs/metrics.md`` holds the same):

- **k-sparse probing** (Gurnee et al. 2023; SAEBench, Karvonen et al. 2025). For each class ``c`` of a labelled
  set, a balanced one-vs-rest task: every row of class ``c`` against as many rows drawn (seeded, without
  replacement) from the other classes, in the train split and in the test split alike (chance = 0.5). On the
  task's *train* rows each feature ``j`` gets the score ``|mean_{y=c} z_j − mean_{y≠c} z_j|`` (mean difference of
  its activations); the ``k`` best features feed a scikit-learn ``LogisticRegression`` (inputs standardised on the
  train rows). The reported number is the test accuracy averaged over the classes' tasks. The same protocol on
  all ``d`` dimensions of the embeddings ``x`` and of the reconstructions ``x̂`` gives the two references.
- **Seed stability**: decoder rows of two SAEs (unit-normalised), cosine matrix ``C = D_A D_Bᵀ``, one-to-one
  matching maximising ``Σ C`` (Hungarian: :func:`scipy.optimize.linear_sum_assignment`); stability = share of
  A's features whose matched B feature has cosine ≥ ``threshold`` (0.7). An A feature left unmatched (A larger
  than B) counts as unstable.
- **PCA baseline** of equal size: scikit-learn ``PCA(n_components=k)`` fitted on the evaluated corpus itself,
  x̂ = mean + projection on the ``k`` components. It is the best rank-``k`` linear reconstruction of that corpus
  (Eckart–Young), an in-sample ceiling for any ``k``-dimensional linear code, which the SAE (``k`` active features
  chosen per text out of many) should beat on FVU.
- **Out-of-domain warning**: the corpus's FVU above ``factor`` (1.5) × the SAE's own held-out FVU.

>>> import numpy as np
>>> rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))[0]
>>> seed_stability(rotation, rotation[::-1])
1.0
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "PcaBaseline",
    "STABILITY_THRESHOLD",
    "WORSE_FVU_FACTOR",
    "HELD_OUT_NAMES",
    "balanced_tasks",
    "corpus_fit",
    "decoder_matrix",
    "domain_warning",
    "encode_dense",
    "fit_pca_baseline",
    "k_sparse_probing",
    "probe_accuracy",
    "probing_report",
    "read_held_out",
    "reconstruction_fit",
    "seed_stability",
]

#: Decoder cosine from which two matched features count as the same feature (SAEBench / Paulo & Belrose 2025).
STABILITY_THRESHOLD = 0.7
#: The corpus reconstructs "much worse" than the SAE's held-out data when its FVU exceeds this × held-out FVU.
WORSE_FVU_FACTOR = 1.5


@torch.no_grad()
def encode_dense(sae: Any, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Dense activations ``z`` [n, num_latents] (float32 numpy) of ``sae`` on ``x``."""
    device = sae.W_dec.device
    rows = torch.as_tensor(np.asarray(x, dtype=np.float32))
    parts = [sae.encode(rows[s : s + batch_size].to(device)).cpu() for s in range(0, len(rows), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, sae.num_latents), dtype=np.float32)


def balanced_tasks(
    y_train: Sequence[Any], y_test: Sequence[Any], *, seed: int = 0, max_classes: int | None = None
) -> list[tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """One balanced one-vs-rest task per class present in both splits (module docstring).

    Returns:
        ``[(class, train_rows, train_is_class, test_rows, test_is_class)]`` in sorted class order (the first
        ``max_classes`` when given); rows index the split's arrays.

    >>> tasks = balanced_tasks(["a", "a", "b", "c"], ["a", "b", "c", "c"])
    >>> [(c, len(tr), int(ytr.sum()), len(te)) for c, tr, ytr, te, _ in tasks]
    [('a', 4, 2, 2), ('b', 2, 1, 2), ('c', 2, 1, 4)]
    """
    rng = np.random.default_rng(seed)
    train_labels, test_labels = np.asarray(y_train), np.asarray(y_test)
    classes = [c for c in sorted(set(train_labels.tolist())) if c in set(test_labels.tolist())]
    tasks = []
    for label in classes[:max_classes]:
        split_rows = []
        for y in (train_labels, test_labels):
            positive, negative = np.flatnonzero(y == label), np.flatnonzero(y != label)
            size = min(len(positive), len(negative))
            positive = rng.choice(positive, size=size, replace=False) if size < len(positive) else positive
            rows = np.concatenate([positive, rng.choice(negative, size=size, replace=False)])
            split_rows.append((rows, y[rows] == label))
        if len(split_rows[0][0]) and len(split_rows[1][0]):
            tasks.append((label, split_rows[0][0], split_rows[0][1], split_rows[1][0], split_rows[1][1]))
    return tasks


def probe_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a standardised scikit-learn ``LogisticRegression`` fitted on ``(train, y_train)``.

    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> probe_accuracy(x, np.array([0, 0, 1, 1]), x, np.array([0, 0, 1, 1]))
    1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train, y_train)
    return float(probe.score(test, y_test))


def k_sparse_probing(
    sae: Any,
    x_train: np.ndarray,
    y_train: Sequence[Any],
    x_test: np.ndarray,
    y_test: Sequence[Any],
    ks: Sequence[int] = (1, 5, 20),
    *,
    seed: int = 0,
    max_classes: int | None = None,
    references: bool = True,
) -> dict[str, float]:
    """k-sparse probing of ``sae`` on a labelled set, beside probes on the embeddings and on the reconstructions.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        x_train, x_test: embeddings [n, d_in] of the train and test texts.
        y_train, y_test: their labels (any hashable values).
        ks: numbers of features the sparse probes may use.
        seed: draws the negatives of each balanced task.
        max_classes: probe only the first classes in sorted order (all by default).
        references: also probe the embeddings and the reconstructions (``False``: the sparse probes only, for a
            sweep over many SAEs, where the embedding probe is the same every time and costs the most).

    Returns:
        ``{"sae@K": mean test accuracy with the top-K features, for each K in ks, "embedding": ..., "reconstruction":
        ..., "n_tasks": classes probed}`` (module docstring); accuracies are NaN when no class has rows in both
        splits.
    """
    from .evaluate import reconstruct

    tasks = balanced_tasks(y_train, y_test, seed=seed, max_classes=max_classes)
    z_train, z_test = encode_dense(sae, x_train), encode_dense(sae, x_test)
    views = (
        {
            "embedding": (np.asarray(x_train, dtype=np.float32), np.asarray(x_test, dtype=np.float32)),
            "reconstruction": (reconstruct(sae, x_train), reconstruct(sae, x_test)),
        }
        if references
        else {}
    )
    scores: dict[str, list[float]] = {name: [] for name in [f"sae@{k}" for k in ks] + list(views)}
    for _, train_rows, train_y, test_rows, test_y in tasks:
        z_task = z_train[train_rows]
        separation = np.abs(z_task[train_y].mean(0) - z_task[~train_y].mean(0))
        order = np.argsort(-separation, kind="stable")
        for k in ks:
            chosen = order[:k]
            scores[f"sae@{k}"].append(probe_accuracy(z_task[:, chosen], train_y, z_test[test_rows][:, chosen], test_y))
        for name, (train, test) in views.items():
            scores[name].append(probe_accuracy(train[train_rows], train_y, test[test_rows], test_y))
    result = {name: float(np.mean(values)) if values else float("nan") for name, values in scores.items()}
    result["n_tasks"] = float(len(tasks))
    return result


def probing_report(
    sae: Any,
    splits: Sequence[Any],
    embed: Callable[[list[str]], np.ndarray],
    ks: Sequence[int] = (1, 5, 20),
    *,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`k_sparse_probing` on each labelled set of ``splits``, its numbers named ``sae/probe/<set name>/<number>``.

    Args:
        sae: the SAE.
        splits: :class:`~aquin_monitor.sae.probe_data.LabelledSplits` (``name``, ``train_texts``,
            ``train_labels``, ``test_texts``, ``test_labels``).
        embed: texts -> embeddings [n, d_in] (the CLI's cached embedding of the SAE's model).
        ks, seed: as :func:`k_sparse_probing`'s.
    """
    out: dict[str, float] = {}
    for split in splits:
        result = k_sparse_probing(
            sae,
            embed(list(split.train_texts)),
            split.train_labels,
            embed(list(split.test_texts)),
            split.test_labels,
            ks,
            seed=seed,
        )
        out.update({f"sae/probe/{split.name}/{name}": value for name, value in result.items()})
    return out


def decoder_matrix(sae_or_decoder: Any) -> np.ndarray:
    """A SAE's decoder rows [num_latents, d_in] (or the given array), float64 numpy, rows unit-normalised."""
    weights = getattr(sae_or_decoder, "W_dec", sae_or_decoder)
    if torch.is_tensor(weights):
        weights = weights.detach().cpu().double().numpy()
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"decoder: expected a [num_latents, d_in] matrix, got shape {weights.shape}")
    return weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)


def seed_stability(decoder_a: Any, decoder_b: Any, threshold: float = STABILITY_THRESHOLD) -> float:
    """Share of A's features whose Hungarian match in B has decoder cosine ≥ ``threshold`` (module docstring).

    Args:
        decoder_a, decoder_b: decoder matrices [num_latents, d_in] (arrays, tensors, or SAEs: their ``W_dec``)
            of one input space.
        threshold: cosine from which a matched pair counts as one feature.

    >>> eye = np.eye(3)
    >>> seed_stability(eye, eye[[2, 0, 1]]), seed_stability(eye, -eye)
    (1.0, 0.0)
    """
    from scipy.optimize import linear_sum_assignment

    a, b = decoder_matrix(decoder_a), decoder_matrix(decoder_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"decoders of different input sizes: {a.shape[1]} and {b.shape[1]}")
    cosine = a @ b.T
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    return float(np.sum(cosine[rows, cols] >= threshold) / len(a))


def reconstruction_fit(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """``{"fvu": Σ‖x − x̂‖² / Σ‖x − x̄‖², "cosine": mean cos(x, x̂)}`` (the definitions of ``sae/fvu``, ``sae/cosine``).

    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> reconstruction_fit(x, x)["fvu"], reconstruction_fit(x, np.zeros_like(x) + 0.5)["fvu"]
    (0.0, 1.0)
    """
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    variance = float(np.sum((x - x.mean(0)) ** 2))
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
    cosine = np.sum(x * x_hat, axis=1) / np.maximum(norms, 1e-12)
    return {
        "fvu": float(np.sum((x - x_hat) ** 2)) / variance if variance > 0 else float("nan"),
        "cosine": float(cosine.mean()),
    }


@dataclass
class PcaBaseline:
    """A fitted rank-``k`` PCA: ``reconstruct(x)`` = mean + (x − mean) V_kᵀ V_k."""

    pca: Any
    n_components: int

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """x̂ of each row of ``x`` (float32)."""
        x = np.asarray(x, dtype=np.float32)
        return self.pca.inverse_transform(self.pca.transform(x)).astype(np.float32)


def fit_pca_baseline(x: np.ndarray, n_components: int, *, seed: int = 0) -> PcaBaseline:
    """scikit-learn ``PCA`` with ``min(n_components, n, d)`` components fitted on ``x`` (exact SVD)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    n_components = int(min(n_components, *x.shape))
    return PcaBaseline(PCA(n_components=n_components, svd_solver="full", random_state=seed).fit(x), n_components)


#: The held-out figures ``sae eval`` sets beside the corpus's (``quality.json`` metric names).
HELD_OUT_NAMES = ("sae/fvu", "sae/cosine", "sae/retrieval/kept_ndcg@10", "sae/stability/second_sae")


def read_held_out(folder: str | os.PathLike) -> dict[str, float]:
    """The SAE's own held-out figures (:data:`HELD_OUT_NAMES`) from ``folder/quality.json`` as
    ``sae/held_out/<name>`` (empty when the folder has no readable report: a converted or hand-made SAE)."""
    path = Path(folder) / "quality.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        "sae/held_out/" + name.removeprefix("sae/"): float(metrics[name])
        for name in HELD_OUT_NAMES
        if isinstance(metrics.get(name), (int, float))
    }


def corpus_fit(sae: Any, x: np.ndarray, held_out: Mapping[str, float], *, corpus: str) -> dict[str, Any]:
    """The quality report of ``sae`` on the corpus ``x`` beside its held-out figures and a PCA of equal size: the
    out-of-domain comparison of ``sae eval`` and of the SAE page, from one computation.

    Returns:
        ``{"metrics": quality_metrics(sae, x) + "sae/pca/fvu", "sae/pca/cosine", "sae/pca/n_components" (the rank-k
        PCA fitted on x) + the ``held_out`` figures, "pca": the PcaBaseline, "warning": domain_warning's line or
        None}``.
    """
    from .evaluate import quality_metrics

    metrics, _ = quality_metrics(sae, x)
    baseline = fit_pca_baseline(x, sae.k)
    pca_fit = reconstruction_fit(x, baseline.reconstruct(x))
    metrics.update(
        {
            "sae/pca/fvu": pca_fit["fvu"],
            "sae/pca/cosine": pca_fit["cosine"],
            "sae/pca/n_components": float(baseline.n_components),
            **held_out,
        }
    )
    warning = domain_warning(metrics["sae/fvu"], held_out.get("sae/held_out/fvu"), corpus=corpus)
    return {"metrics": metrics, "pca": baseline, "warning": warning}


def domain_warning(
    corpus_fvu: float, held_out_fvu: float | None, *, corpus: str = "the corpus", factor: float = WORSE_FVU_FACTOR
) -> str | None:
    """One line when ``corpus_fvu`` > ``factor`` × ``held_out_fvu`` (the SAE fits this corpus much worse), else None.

    >>> domain_warning(0.5, 0.2, corpus="news.jsonl")[:93]
    "warning: news.jsonl reconstructs much worse than the SAE's held-out data (FVU 0.500 vs 0.200)"
    >>> domain_warning(0.25, 0.2) is None, domain_warning(0.9, None) is None
    (True, True)
    """
    if held_out_fvu is None or not held_out_fvu > 0 or not corpus_fvu > factor * held_out_fvu:
        return None
    return (
        f"warning: {corpus} reconstructs much worse than the SAE's held-out data (FVU {corpus_fvu:.3f} vs "
        f"{held_out_fvu:.3f}), {corpus_fvu / held_out_fvu:.1f}x > {factor:g}x: its features may not describe "
        "these texts; read its explanations with care or train a SAE on this domain"
    )
