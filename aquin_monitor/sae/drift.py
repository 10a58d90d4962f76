"""Drift explained by the base model's SAE: which features moved, and why the pair similarities that changed most
changed.

Both views read the reference (the base model, or the previous checkpoint) and the checkpoint through
the **base model's SAE**: its dictionary is the fixed coordinate system, and the checkpoint's embeddings
are encoded by it as they are. The further the checkpoint's space drifts from the base, the worse that
dictionary fits it, and the larger the error terms below get: they are reported, not hidden.

**Features moved.** The same n probe texts are embedded by both models, so each feature's activation is
paired text by text: ``Δz_i(t) = z_i(after(t)) − z_i(before(t))``. Per feature, the Wilcoxon signed-rank
test (``scipy.stats.wilcoxon``: zero differences dropped, the ``"wilcox"`` zero method; normal
approximation with tie correction) asks whether ``Δz_i`` is symmetric about 0. Only features whose
activation differs on at least one text are tested (a feature with no difference carries no evidence);
their m p-values are corrected with Benjamini–Hochberg (``scipy.stats.false_discovery_control``), and a
feature has *moved* when ``q < α`` (0.05). Moved features are listed by ``|mean Δz_i|`` over all n texts.

**Pairs.** For the pairs whose cosine changed most (the retrieval set's relevant query–document pairs
when there is one, else pairs of probe texts), the change is split exactly with the identity of
:func:`~aquin_monitor.sae.decompose.contrast`, ``cos(a, b) = Σ_i φ_i + β + ε``, taken before and after:

    Δcos = Σ_i Δφ_i + Δβ + Δε        (float64; the closure is at rounding level)

``Δφ_i`` is feature i's part of the change, ``Δβ`` the bias term's (``b_dec`` is fixed: it moves only
because the embeddings turn), ``Δε`` what the base dictionary attributes to no feature.
``error_share = |Δε| / (Σ_i|Δφ_i| + |Δβ| + |Δε|)`` says how much of a pair's change the base SAE leaves
unexplained; ``drift/<vs>/sae_pair_error_share`` is its mean over the listed pairs.

Example:

    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(8, 32, 4, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> before = rng.normal(size=(40, 8)).astype("float32")
    >>> after = (before + 0.3 * rng.normal(size=(40, 8))).astype("float32")
    >>> result = explain_drift(sae, before, after, [f"text {i}" for i in range(40)], top_pairs=2)
    >>> pair = result.pairs[0]
    >>> abs(pair.feature_delta + pair.bias_delta + pair.error_delta - pair.delta) < 1e-12
    True
    >>> sorted(result.metrics("drift/base"))
    ['drift/base/sae_features_moved', 'drift/base/sae_pair_error_share']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .. import snapshot_keys as keys
from .decompose import contrast

__all__ = [
    "DriftExplanation",
    "FeatureShift",
    "MovedFeature",
    "PairSet",
    "PairShift",
    "PairTerm",
    "evenly_spaced",
    "explain_drift",
    "explain_pair",
    "explanation_lines",
    "feature_shift",
    "most_changed_probe_pairs",
    "relevant_pairs",
    "sparse_codes",
]

#: The family-wise level of the per-feature test (Benjamini–Hochberg q below it: the feature moved).
ALPHA = 0.05
#: How the per-feature test is done, as ``snapshot.json`` records it.
FEATURE_TEST = (
    "Wilcoxon signed-rank per feature, paired by text (zero differences dropped, normal approximation), "
    "Benjamini-Hochberg over the features tested"
)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices of ``range(n)``, evenly spaced, first and last included.

    >>> evenly_spaced(10, 4).tolist(), evenly_spaced(3, 8).tolist(), evenly_spaced(5, 0).tolist()
    ([0, 3, 6, 9], [0, 1, 2], [])
    """
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


@torch.no_grad()
def sparse_codes(sae: Any, embeddings: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Dense feature activations ``z`` ``[n, num_latents]`` (float64) of ``embeddings`` under ``sae``."""
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(sae.W_dec.device)
    blocks = [
        sae.encode(x[start : start + batch_size]).double().cpu().numpy() for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(blocks) if blocks else np.zeros((0, sae.num_latents))


def _label(labels: Sequence[str | None] | None, feature: int) -> str | None:
    return None if labels is None or feature >= len(labels) else labels[feature]


@dataclass
class MovedFeature:
    """One feature whose activation moved (q < α), with its effect and firing rates before and after."""

    feature: int
    mean_delta: float
    """Mean over the texts of ``z_after − z_before`` (zeros included): the effect, signed."""
    mean_before: float
    mean_after: float
    firing_before: float
    """Share of the texts on which the feature fires, before and after."""
    firing_after: float
    texts_changed: int
    """Texts whose activation differs (the test's sample size after zero differences are dropped)."""
    p_value: float
    q_value: float
    """Benjamini–Hochberg adjusted p-value."""
    label: str | None = None


@dataclass
class FeatureShift:
    """The per-feature paired test's result (module docstring)."""

    n_texts: int
    n_tested: int
    """Features whose activation differs on at least one text (the m of Benjamini–Hochberg)."""
    n_moved: int
    """Features with ``q < alpha``."""
    alpha: float
    moved: list[MovedFeature]
    """The moved features by ``|mean_delta|`` descending (at most ``top``)."""
    test: str = FEATURE_TEST


def feature_shift(
    codes_before: np.ndarray,
    codes_after: np.ndarray,
    *,
    alpha: float = ALPHA,
    top: int = 20,
    labels: Sequence[str | None] | None = None,
) -> FeatureShift:
    """Which features' activations moved between two encodings of the same texts (paired test + BH).

    Args:
        codes_before: ``[n, F]`` activations of the n texts under the reference model (:func:`sparse_codes`).
        codes_after: the same texts under the checkpoint.
        alpha: the false-discovery rate at which a feature counts as moved.
        top: moved features listed.
        labels: optional label per feature.

    Example (feature 0 rises on every text, feature 1 is unchanged, feature 2 wobbles):

        >>> rng = np.random.default_rng(0)
        >>> before = np.abs(rng.normal(size=(60, 3)))
        >>> after = before + np.stack([np.full(60, 0.5), np.zeros(60), rng.normal(0, 0.01, 60)], axis=1)
        >>> shift = feature_shift(before, after)
        >>> shift.n_tested, shift.n_moved, shift.moved[0].feature, round(shift.moved[0].mean_delta, 3)
        (2, 1, 0, 0.5)
    """
    from scipy.stats import false_discovery_control, wilcoxon

    before, after = np.asarray(codes_before, dtype=np.float64), np.asarray(codes_after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"codes must be two [n, features] arrays of one shape, got {before.shape} and {after.shape}")
    delta = after - before
    changed = (delta != 0).sum(axis=0)
    tested = np.flatnonzero(changed > 0)
    p_values, q_values = np.ones(delta.shape[1]), np.ones(delta.shape[1])
    if tested.size:
        test = wilcoxon(delta[:, tested], zero_method="wilcox", method="approx", axis=0)
        p_values[tested] = np.nan_to_num(np.asarray(test.pvalue, dtype=np.float64), nan=1.0)
        q_values[tested] = false_discovery_control(p_values[tested], method="bh")
    mean_delta = delta.mean(axis=0)
    moved = np.flatnonzero(q_values < alpha)
    moved = moved[np.lexsort((moved, -np.abs(mean_delta[moved])))]
    listed = [
        MovedFeature(
            feature=int(i),
            mean_delta=float(mean_delta[i]),
            mean_before=float(before[:, i].mean()),
            mean_after=float(after[:, i].mean()),
            firing_before=float((before[:, i] > 0).mean()),
            firing_after=float((after[:, i] > 0).mean()),
            texts_changed=int(changed[i]),
            p_value=float(p_values[i]),
            q_value=float(q_values[i]),
            label=_label(labels, int(i)),
        )
        for i in moved[:top]
    ]
    return FeatureShift(len(delta), int(tested.size), int(moved.size), float(alpha), listed)


@dataclass
class PairTerm:
    """One feature's part of a pair's cosine change: ``delta_phi = phi_after − phi_before``."""

    feature: int
    delta_phi: float
    phi_before: float
    phi_after: float
    label: str | None = None


@dataclass
class PairShift:
    """A pair's cosine change split exactly: ``delta = feature_delta + bias_delta + error_delta``."""

    texts: list[str]
    """The pair's two texts (query and document for a retrieval pair)."""
    rows: list[int]
    """Where they come from: query and document positions of the retrieval set, or two probe rows."""
    cosine_before: float
    cosine_after: float
    delta: float
    """``cosine_after − cosine_before``, the measured change."""
    feature_delta: float
    """``Σ_i Δφ_i`` over every feature active in either text, before or after."""
    bias_delta: float
    error_delta: float
    error_share: float
    """``|Δε| / (Σ_i |Δφ_i| + |Δβ| + |Δε|)``: the part of the change the base SAE does not explain."""
    terms: list[PairTerm]
    """The features with the largest ``|Δφ_i|`` (at most ``top_terms``)."""
    other_features_delta: float
    """``Σ Δφ_i`` of the features not in ``terms`` (so ``terms``, this, bias and error add up to ``delta``)."""
    closure: float
    """``delta − (feature_delta + bias_delta + error_delta)``: float64 rounding, nothing more."""


def explain_pair(
    sae: Any,
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    *,
    texts: Sequence[str] = ("", ""),
    rows: Sequence[int] = (-1, -1),
    top_terms: int = 5,
    labels: Sequence[str | None] | None = None,
) -> PairShift:
    """Split the change of ``cos(a, b)`` from ``before`` to ``after`` into feature, bias and error terms.

    Args:
        sae: the base model's :class:`~aquin_monitor.sae.model.SparseAutoencoder`, for both encodings.
        before: the pair's two embeddings under the reference model.
        after: the same two texts' embeddings under the checkpoint.
        texts, rows: carried into the result.
        top_terms: features listed by ``|Δφ_i|``.
        labels: optional label per feature.
    """
    split_before, split_after = contrast(sae, *before), contrast(sae, *after)
    phi_before = {t.feature: t.phi for t in split_before.terms}
    phi_after = {t.feature: t.phi for t in split_after.terms}
    terms = [
        PairTerm(f, phi_after.get(f, 0.0) - phi_before.get(f, 0.0), phi_before.get(f, 0.0), phi_after.get(f, 0.0))
        for f in sorted(set(phi_before) | set(phi_after))
    ]
    terms.sort(key=lambda t: (-abs(t.delta_phi), t.feature))
    for term in terms[:top_terms]:
        term.label = _label(labels, term.feature)
    feature_delta = float(np.sum([t.delta_phi for t in terms]))
    bias_delta = split_after.bias_term - split_before.bias_term
    error_delta = split_after.error_term - split_before.error_term
    delta = split_after.cosine - split_before.cosine
    total = float(np.sum([abs(t.delta_phi) for t in terms])) + abs(bias_delta) + abs(error_delta)
    return PairShift(
        texts=[str(t) for t in texts],
        rows=[int(r) for r in rows],
        cosine_before=split_before.cosine,
        cosine_after=split_after.cosine,
        delta=delta,
        feature_delta=feature_delta,
        bias_delta=bias_delta,
        error_delta=error_delta,
        error_share=abs(error_delta) / total if total else 0.0,
        terms=terms[:top_terms],
        other_features_delta=float(np.sum([t.delta_phi for t in terms[top_terms:]])),
        closure=delta - (feature_delta + bias_delta + error_delta),
    )


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.where(norms > 0, norms, 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def most_changed_probe_pairs(
    before: np.ndarray, after: np.ndarray, top: int, max_rows: int = 1000
) -> tuple[list[tuple[int, int]], int]:
    """The ``top`` pairs of probe rows whose cosine changed most (unchanged pairs left out), and how many
    pairs were compared.

    All distinct pairs of at most ``max_rows`` rows (evenly spaced over the probe) are compared, exactly,
    from the two cosine matrices; ties go to the smaller row indices.

    >>> x = np.eye(3, dtype=np.float32)
    >>> y = x.copy(); y[2] = [1, 0, 1]
    >>> most_changed_probe_pairs(x, y, top=1)
    ([(0, 2)], 3)
    """
    rows = evenly_spaced(len(before), max_rows)
    unit_before, unit_after = _unit(before[rows]), _unit(after[rows])
    upper_i, upper_j = np.triu_indices(len(rows), k=1)
    change = (unit_after @ unit_after.T - unit_before @ unit_before.T)[upper_i, upper_j]
    order = [k for k in np.argsort(-np.abs(change), kind="stable")[:top] if change[k] != 0]
    return [(int(rows[upper_i[k]]), int(rows[upper_j[k]])) for k in order], int(change.size)


def relevant_pairs(relevant: Sequence[dict[int, int]], max_pairs: int = 1000) -> list[tuple[int, int]]:
    """``(query position, document position)`` of the relevant pairs (grade > 0), at most ``max_pairs``
    of them evenly spaced, from a retrieval set's positional relevance (``RetrievalSet.positional()[0]``).

    >>> relevant_pairs([{2: 1, 0: 2}, {1: 0}, {1: 1}])
    [(0, 0), (0, 2), (2, 1)]
    """
    pairs = [(q, d) for q, docs in enumerate(relevant) for d, grade in sorted(docs.items()) if grade > 0]
    return [pairs[i] for i in evenly_spaced(len(pairs), max_pairs)]


@dataclass
class PairSet:
    """Pairs of texts embedded by both models, row for row: ``a_*[k]``, ``b_*[k]`` are pair k's two texts."""

    a_before: np.ndarray
    b_before: np.ndarray
    a_after: np.ndarray
    b_after: np.ndarray
    texts: list[tuple[str, str]]
    rows: list[tuple[int, int]]


@dataclass
class DriftExplanation:
    """What :func:`explain_drift` found: the moved features and the pairs that changed most, split."""

    features: FeatureShift
    pairs: list[PairShift]
    pair_source: str
    """``"retrieval"`` (the relevant query–document pairs) or ``"probe"`` (pairs of probe texts)."""
    candidate_pairs: int
    """Pairs compared to find those listed."""
    sae_error_note: str = field(
        default="the checkpoint's embeddings are encoded by the base model's SAE: the error terms grow as the "
        "space leaves the base dictionary"
    )

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>/sae_features_moved`` and (with pairs) ``<prefix>/sae_pair_error_share``."""
        metrics = {f"{prefix}/sae_features_moved": float(self.features.n_moved)}
        if self.pairs:
            metrics[f"{prefix}/sae_pair_error_share"] = float(np.mean([p.error_share for p in self.pairs]))
        return metrics

    def details(self) -> dict[str, Any]:
        """The two ``snapshot.json`` details: :data:`~aquin_monitor.snapshot_keys.SAE_DRIFT_FEATURES`, ``…_PAIRS``."""
        pairs = {
            "source": self.pair_source,
            "candidates": self.candidate_pairs,
            "note": self.sae_error_note,
            "pairs": [asdict(p) for p in self.pairs],
        }
        return {keys.SAE_DRIFT_FEATURES: asdict(self.features), keys.SAE_DRIFT_PAIRS: pairs}


def explain_drift(
    sae: Any,
    before: np.ndarray,
    after: np.ndarray,
    texts: Sequence[str],
    *,
    pairs: PairSet | None = None,
    labels: Sequence[str | None] | None = None,
    alpha: float = ALPHA,
    top_features: int = 20,
    top_pairs: int = 10,
    top_terms: int = 5,
    max_rows: int = 1000,
) -> DriftExplanation:
    """The features that moved from ``before`` to ``after`` and the pairs whose cosine changed most, split.

    Args:
        sae: the *base* model's SAE; it encodes both models' embeddings.
        before: ``[n, d]`` probe embeddings of the reference model.
        after: ``[n, d]`` embeddings of the same texts by the checkpoint.
        texts: the n probe texts.
        pairs: query–document pairs embedded by both models; None: pairs of probe texts. Pairs whose
            cosine did not change are not listed.
        labels: optional label per feature (the SAE folder's ``features.json``).
        alpha: false-discovery rate of the per-feature test.
        top_features, top_pairs, top_terms: list lengths.
        max_rows: probe rows (evenly spaced) used by the test and the probe-pair search.

    Raises:
        ValueError: shapes that disagree with each other or with the SAE.
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 2 or before.shape[1] != sae.d_in or len(texts) != len(before):
        raise ValueError(
            f"need two [n, {sae.d_in}] embedding arrays of one shape and n texts, got {before.shape}, "
            f"{after.shape} and {len(texts)} texts"
        )
    rows = evenly_spaced(len(before), max_rows)
    features = feature_shift(
        sparse_codes(sae, before[rows]), sparse_codes(sae, after[rows]), alpha=alpha, top=top_features, labels=labels
    )
    if pairs is not None:
        change = _row_cosines(pairs.a_after, pairs.b_after) - _row_cosines(pairs.a_before, pairs.b_before)
        chosen = [k for k in np.argsort(-np.abs(change), kind="stable")[:top_pairs] if change[k] != 0]
        listed = [
            explain_pair(
                sae,
                (pairs.a_before[k], pairs.b_before[k]),
                (pairs.a_after[k], pairs.b_after[k]),
                texts=pairs.texts[k],
                rows=pairs.rows[k],
                top_terms=top_terms,
                labels=labels,
            )
            for k in chosen
        ]
        return DriftExplanation(features, listed, "retrieval", len(change))
    probe_pairs, candidates = most_changed_probe_pairs(before, after, top_pairs, max_rows)
    listed = [
        explain_pair(
            sae,
            (before[i], before[j]),
            (after[i], after[j]),
            texts=(texts[i], texts[j]),
            rows=(i, j),
            top_terms=top_terms,
            labels=labels,
        )
        for i, j in probe_pairs
    ]
    return DriftExplanation(features, listed, "probe", candidates)


def _named(feature: Any, label: Any) -> str:
    return f"#{feature}" + (f" [{label}]" if label else "")


def explanation_lines(details: dict[str, Any], *, max_text: int = 60, top_terms: int = 3) -> list[str]:
    """Plain-text tables of a :meth:`DriftExplanation.details` (what ``aquin-monitor diff --sae`` prints).

    >>> shift = FeatureShift(10, 3, 1, 0.05, [MovedFeature(4, 0.2, 0.1, 0.3, 0.5, 0.9, 7, 1e-4, 3e-4, "cats")])
    >>> lines = explanation_lines(DriftExplanation(shift, [], "probe", 45).details())
    >>> lines[0]
    'SAE features moved (q < 0.05): 1 of 3 tested on 10 texts'
    >>> lines[2].split()[:3]
    ['#4', '[cats]', '+0.2000']
    """
    features = details.get(keys.SAE_DRIFT_FEATURES) or {}
    lines = [
        f"SAE features moved (q < {features.get('alpha')}): {features.get('n_moved')} of "
        f"{features.get('n_tested')} tested on {features.get('n_texts')} texts",
        f"  {'feature':<34} {'mean Δ':>8} {'firing before→after':>20} {'q':>9}",
    ]
    for f in features.get("moved") or []:
        firing = f"{f['firing_before']:.3f} → {f['firing_after']:.3f}"
        name = _named(f["feature"], f["label"])[:34]
        lines.append(f"  {name:<34} {f['mean_delta']:+8.4f} {firing:>20} {f['q_value']:9.2e}")
    pairs = details.get(keys.SAE_DRIFT_PAIRS) or {}
    lines.append(
        f"Pairs whose cosine changed most ({pairs.get('source')} pairs, {pairs.get('candidates')} compared): "
        "Δcos = Σ Δφ + Δbias + Δerror"
    )
    for p in pairs.get("pairs") or []:
        a, b = (" ".join(str(t).split())[:max_text] for t in p["texts"])
        lines.append(f"  {a!r} ~ {b!r}")
        terms = ", ".join(f"{_named(t['feature'], t['label'])} {t['delta_phi']:+.4f}" for t in p["terms"][:top_terms])
        lines.append(
            f"    cos {p['cosine_before']:.4f} → {p['cosine_after']:.4f} (Δ {p['delta']:+.4f}) = features "
            f"{p['feature_delta']:+.4f} + bias {p['bias_delta']:+.4f} + error {p['error_delta']:+.4f} "
            f"(error share {p['error_share']:.2f})"
        )
        lines.append(f"    features that moved it most: {terms}")
    return lines
