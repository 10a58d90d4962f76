"""One home per metric's meaning: name pattern → meaning, unit, direction and plot bounds.

Every name aquin-monitor logs is declared here once, as ``docs/metrics.md`` documents it (with the
same placeholders: ``NN`` a two-digit layer index, ``N`` an integer, ``<vs>`` ``base`` or ``previous``,
``<parameter>`` a parameter name, ``<metric>`` a retrieval metric without its ``retrieval/`` prefix,
``<group>`` a gradient-norm group, ``<set>`` a labelled set's name). The report reads the meanings
(:func:`metric_meaning`), the sentence-transformers evaluator the direction (:func:`higher_is_better`), and a
test checks ``docs/metrics.md`` against :data:`METRICS` (every declared name documented with the same unit, and
every documented name declared). This is the torchmetrics model: metadata declared with the metric
(``higher_is_better``, ``plot_lower_bound`` / ``plot_upper_bound``), read by plots, model selection
and docs. The alarm kinds are declared here too (:data:`ALARM_REGISTRY`: name, meaning, colour), so the
figures below the monitor read the same list the monitor checks ``stop_on`` against.

Ground floor: imports nothing from the package.

>>> spec = find_metric("drift/previous/cka")
>>> spec.name, spec.unit, spec.higher_is_better, spec.bounds
('drift/<vs>/cka', 'similarity in [0, 1]', True, (0.0, 1.0))
>>> higher_is_better("geometry/anisotropy"), higher_is_better("rerank/after/mrr@10"), higher_is_better("custom/x")
(False, True, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "MetricSpec",
    "METRICS",
    "PLACEHOLDERS",
    "AlarmKind",
    "ALARM_REGISTRY",
    "ALARM_KINDS",
    "ALARM_COLOURS",
    "name_pattern",
    "find_metric",
    "metric_meaning",
    "higher_is_better",
]

#: Placeholders of a declared name and the regex each stands for.
PLACEHOLDERS = {
    "NN": r"\d{2,}",
    "N": r"\d+",
    "<vs>": "(?:base|previous)",
    "<parameter>": ".+",
    "<metric>": "[^/]+",
    "<group>": ".+",
    "<set>": "[^/]+",
}

Bounds = tuple[float | None, float | None]
COSINE: Bounds = (-1.0, 1.0)
FRACTION: Bounds = (0.0, 1.0)
NON_NEGATIVE: Bounds = (0.0, None)
UNBOUNDED: Bounds = (None, None)


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """What one metric name (or name pattern) means.

    Attributes:
        name: the name as documented, placeholders included (``drift/<vs>/cka``).
        meaning: one sentence, shown beside the value (report tables).
        unit: the unit, as ``docs/metrics.md``'s unit column gives it.
        higher_is_better: True / False when a larger value is better / worse, None when neither
            (a gradient norm, a learning rate, a drift that fine-tuning is meant to cause).
        bounds: ``(lower, upper)`` a plot's axis may be fixed to; None where open.
    """

    name: str
    meaning: str
    unit: str
    higher_is_better: bool | None = None
    bounds: Bounds = field(default=UNBOUNDED)

    @property
    def pattern(self) -> re.Pattern[str]:
        return name_pattern(self.name)


_NORM = "gradient L2 norm (loss units per weight unit)"


def _grad_norms() -> tuple[MetricSpec, ...]:
    def norm(name: str, meaning: str) -> MetricSpec:
        return MetricSpec(name=name, meaning=meaning, unit=_NORM, bounds=NON_NEGATIVE)

    return (
        norm("grad_norm/embeddings", "how strongly the loss pushes on the token/position/type embedding tables"),
        norm("grad_norm/layer.NN", "gradient flow through this encoder block; a block near 0 learns nothing"),
        norm("grad_norm/layer.NN/lora_A", "gradient of this block's LoRA A matrices (0 until the B side moves)"),
        norm("grad_norm/layer.NN/lora_B", "gradient of this block's LoRA B matrices"),
        norm("grad_norm/other/lora_A", "gradient of the LoRA A matrices outside any encoder block"),
        norm("grad_norm/other/lora_B", "gradient of the LoRA B matrices outside any encoder block"),
        norm("grad_norm/pooler", "gradient of the transformer's pooler"),
        norm("grad_norm/head", "gradient of the layers after pooling (Dense / projection modules)"),
        norm(
            "grad_norm/total", "gradient norm over every trainable parameter: what clipping compares with max_grad_norm"
        ),
        norm("grad_norm_post_clip/<group>", "a group's gradient norm measured after the trainer's clipping"),
        norm("grad_norm_tensor/<parameter>", "gradient norm of one parameter tensor (opt-in per-tensor view)"),
    )


def _contrastive() -> tuple[MetricSpec, ...]:
    def cos(name: str, meaning: str, better: bool | None) -> MetricSpec:
        return MetricSpec(name=name, meaning=meaning, unit="cosine", higher_is_better=better, bounds=COSINE)

    return (
        cos("contrastive/pos_sim", "how close anchors are to their positives", True),
        cos("contrastive/neg_sim", "how close anchors are to the other rows' positives (in-batch negatives)", False),
        cos("contrastive/hard_neg_sim", "how close anchors are to their own labelled hard negatives", False),
        cos(
            "contrastive/hardest_neg_sim",
            "the closest negative of each row: near pos_sim means false negatives or collapse",
            False,
        ),
        cos("contrastive/gap", "pos_sim − neg_sim: how far positives stand out from negatives", True),
        MetricSpec(
            name="contrastive/in_batch_acc",
            meaning="fraction of rows whose most similar column is their positive",
            unit="fraction in [0, 1]",
            higher_is_better=True,
            bounds=FRACTION,
        ),
        MetricSpec(
            name="contrastive/loss",
            meaning="the training loss as the monitor saw it",
            unit="the loss's own unit",
            higher_is_better=False,
        ),
        cos("contrastive/pos_sim_hist", "distribution of the step's positive similarities", None),
        cos("contrastive/neg_sim_hist", "distribution of the step's in-batch negative similarities", None),
    )


@dataclass(frozen=True)
class AlarmKind:
    """One kind of alarm: logged as ``alarm/<name>``, explained by ``meaning``, drawn in ``colour``.

    The colour marks the kind's alarms in every figure (:mod:`aquin_monitor.plots`) and its badge in the
    report; it keeps a contrast of at least 3:1 against white (the axes' and the badge text's colour).
    """

    name: str
    meaning: str
    colour: str


#: Every alarm kind the monitor raises, in the order the docs list them: the one list that the monitor's
#: ``stop_on`` check, the recipes' ``--stop-on`` choices, the figures' colours, the report's badges and the
#: ``alarm/<kind>`` entries of :data:`METRICS` read (:mod:`aquin_monitor.alarms` re-exports it).
ALARM_REGISTRY: tuple[AlarmKind, ...] = (
    AlarmKind("dead_layer", "a block stopped learning (vanishing gradient, frozen by mistake, collapsed)", "#7b3294"),
    AlarmKind("spike", "a sudden gradient explosion in one block", "#e66101"),
    AlarmKind("nan", "a gradient norm or the loss is NaN or infinite", "#d7191c"),
    AlarmKind("gap_narrowing", "the loss improves by pulling negatives closer: a shortcut or collapse", "#0571b0"),
    AlarmKind("false_negatives", "the batch's negatives hold duplicates of its positives (false negatives)", "#c51b7d"),
    AlarmKind("plateau", "the learning rate is 0: the weights no longer move", "#8c510a"),
    AlarmKind("collapse", "in-batch negatives converge on the positives: the embedding space is collapsing", "#01665e"),
    AlarmKind("lr_jump", "the learning rate jumped tenfold above anything it had been: a changed schedule", "#7f7f00"),
)

#: The registered alarm kinds' names.
#:
#: >>> ALARM_KINDS[:4]
#: ('dead_layer', 'spike', 'nan', 'gap_narrowing')
ALARM_KINDS: tuple[str, ...] = tuple(kind.name for kind in ALARM_REGISTRY)

#: Colour of each registered alarm kind (figures and report badges).
ALARM_COLOURS: dict[str, str] = {kind.name: kind.colour for kind in ALARM_REGISTRY}


def _optimizer_and_alarms() -> tuple[MetricSpec, ...]:
    def flag(kind: AlarmKind) -> MetricSpec:
        return MetricSpec(
            name=f"alarm/{kind.name}", meaning=kind.meaning, unit="flag", higher_is_better=False, bounds=FRACTION
        )

    return (
        MetricSpec(
            name="optim/lr",
            meaning="the learning rate this optimizer step applied",
            unit="learning rate",
            bounds=NON_NEGATIVE,
        ),
        MetricSpec(
            name="optim/lr/group.N",
            meaning="the learning rate parameter group N applied",
            unit="learning rate",
            bounds=NON_NEGATIVE,
        ),
        *(flag(kind) for kind in ALARM_REGISTRY),
    )


def _geometry() -> tuple[MetricSpec, ...]:
    def geo(name: str, meaning: str, unit: str, better: bool | None, bounds: Bounds) -> MetricSpec:
        return MetricSpec(name=f"geometry/{name}", meaning=meaning, unit=unit, higher_is_better=better, bounds=bounds)

    mean_cosine = "mean cosine over all probe pairs: 0 = spread like random directions, 1 = one direction"
    pca = "PCA components needed to explain {}% of the variance (intrinsic dimension)"
    return (
        geo("anisotropy", mean_cosine, "cosine", False, COSINE),
        geo("pair_cosine_mean", mean_cosine + " (sampled pairs)", "cosine", False, COSINE),
        geo("pair_cosine_std", "spread of the pairwise cosines", "cosine", None, (0.0, 1.0)),
        geo(
            "pair_cosine_baseline_std",
            "1/√d: the spread of cosines between random directions",
            "cosine",
            None,
            (0.0, 1.0),
        ),
        geo(
            "rogue_top1_share",
            "share of the anisotropy carried by the top dimension: a rogue dimension",
            "fraction",
            False,
            FRACTION,
        ),
        geo(
            "rogue_top5_share",
            "share of the anisotropy carried by the top five dimensions",
            "fraction",
            False,
            FRACTION,
        ),
        geo("id_pca90", pca.format(90), "components", True, NON_NEGATIVE),
        geo("id_pca95", pca.format(95), "components", True, NON_NEGATIVE),
        geo("id_pca99", pca.format(99), "components", True, NON_NEGATIVE),
        geo(
            "effective_rank",
            "exp(entropy of the normalised singular values): how many directions carry the variance",
            "dimensions",
            True,
            NON_NEGATIVE,
        ),
        geo(
            "alignment",
            "mean squared distance between same-label pairs (lower: positives closer)",
            "squared distance in [0, 4]",
            False,
            (0.0, 4.0),
        ),
        geo(
            "uniformity",
            "log E exp(−2‖x−y‖²) over all pairs (lower: more evenly spread on the sphere)",
            "log-mean kernel, ≤ 0",
            False,
            (None, 0.0),
        ),
        geo(
            "ood_threshold",
            "cosine distance to the centroid above which a text is flagged",
            "cosine distance",
            None,
            (0.0, 2.0),
        ),
        geo(
            "ood_fraction",
            "fraction of probe texts flagged out-of-distribution (far from the centroid)",
            "fraction",
            None,
            FRACTION,
        ),
        geo(
            "ood_distance_mean",
            "mean cosine distance of the probe texts to their centroid",
            "cosine distance in [0, 2]",
            None,
            (0.0, 2.0),
        ),
    )


def _layers_and_attention() -> tuple[MetricSpec, ...]:
    return (
        MetricSpec(
            name="layers/similarity.NN",
            unit="cosine",
            bounds=COSINE,
            meaning="mean pairwise cosine of this layer's pooled states; the last layer is the one the contrastive "
            "objective shaped (e.g. all-MiniLM-L6-v2: ~0.7 in earlier layers, ~0.1 at the last)",
        ),
        MetricSpec(
            name="attention/entropy.NN",
            unit="nats",
            bounds=NON_NEGATIVE,
            meaning="mean attention entropy of this layer's heads",
        ),
        MetricSpec(
            name="attention/entropy_mean",
            unit="nats",
            bounds=NON_NEGATIVE,
            meaning="mean attention entropy of every head",
        ),
        MetricSpec(
            name="attention/normalized_entropy_mean",
            unit="fraction in [0, 1]",
            bounds=FRACTION,
            meaning="mean attention entropy ÷ log(length): 0 = one token, 1 = uniform",
        ),
        MetricSpec(
            name="attention/collapsed_heads",
            unit="heads",
            higher_is_better=False,
            bounds=NON_NEGATIVE,
            meaning="heads whose attention sits on one token (entropy near 0)",
        ),
        MetricSpec(
            name="attention/dead_heads",
            unit="heads",
            higher_is_better=False,
            bounds=NON_NEGATIVE,
            meaning="heads attending uniformly to every token (entropy near log(length))",
        ),
    )


def _retrieval() -> tuple[MetricSpec, ...]:
    def ret(name: str, meaning: str, unit: str, better: bool | None, bounds: Bounds) -> MetricSpec:
        return MetricSpec(name=f"retrieval/{name}", meaning=meaning, unit=unit, higher_is_better=better, bounds=bounds)

    recall = "fraction of each query's relevant documents found in the top {}"
    return (
        ret("recall@1", recall.format(1), "fraction", True, FRACTION),
        ret("recall@5", recall.format(5), "fraction", True, FRACTION),
        ret("recall@10", recall.format(10), "fraction", True, FRACTION),
        ret(
            "mrr@10",
            "1 / rank of the first relevant document, averaged over queries (0 beyond 10)",
            "fraction",
            True,
            FRACTION,
        ),
        ret(
            "ndcg@10",
            "graded ranking quality of the relevant documents in the top 10 (1 = ideal order)",
            "fraction",
            True,
            FRACTION,
        ),
        ret(
            "mean_first_rank",
            "average rank of the first relevant document (lower is better)",
            "rank (1 = top)",
            False,
            (1.0, None),
        ),
        ret(
            "median_first_rank",
            "median rank of the first relevant document (lower is better)",
            "rank",
            False,
            (1.0, None),
        ),
        ret("positive_sim", "cosine of each query to its closest relevant document", "cosine", True, COSINE),
        ret("negative_sim", "cosine of each query to its closest negative document", "cosine", False, COSINE),
        ret(
            "hard_negative_gap",
            "sim(closest relevant) − sim(closest negative), averaged; below 0 a negative wins",
            "cosine",
            True,
            (-2.0, 2.0),
        ),
        ret("n_queries", "queries evaluated (those with a relevant document)", "queries", None, NON_NEGATIVE),
        ret(
            "n_queries_without_relevant",
            "queries left out of every average (no relevant document)",
            "queries",
            None,
            NON_NEGATIVE,
        ),
        MetricSpec(name="rerank/before/<metric>", meaning="before reranking", unit="as the metric"),
        MetricSpec(
            name="rerank/after/<metric>", meaning="after reranking with the cross-encoder", unit="as the metric"
        ),
    )


def _drift() -> tuple[MetricSpec, ...]:
    def drift(name: str, meaning: str, unit: str, better: bool | None, bounds: Bounds) -> MetricSpec:
        return MetricSpec(name=f"drift/<vs>/{name}", meaning=meaning, unit=unit, higher_is_better=better, bounds=bounds)

    neighbours = "share of each text's nearest neighbours that are still its neighbours"
    centroid = "movement of each label's centroid after Procrustes alignment ({})"
    ranks = "share of the relevant documents whose first rank {} against the reference"
    return (
        drift(
            "cka",
            "linear CKA with the reference snapshot: 1 = the same geometry up to rotation and scale",
            "similarity in [0, 1]",
            True,
            FRACTION,
        ),
        drift("knn_overlap@10", neighbours, "fraction", True, FRACTION),
        drift("knn_jaccard@10", neighbours + " (Jaccard form)", "fraction", True, FRACTION),
        drift(
            "anisotropy_delta", "change of the mean pairwise cosine against the reference", "cosine", None, (-2.0, 2.0)
        ),
        drift(
            "similarity_mean_shift",
            "change of the mean pairwise cosine against the reference",
            "cosine",
            None,
            (-2.0, 2.0),
        ),
        drift(
            "similarity_wasserstein",
            "distance between the pairwise-cosine distributions (sampled pairs)",
            "cosine, in [0, 2]",
            None,
            (0.0, 2.0),
        ),
        drift(
            "similarity_pair_change", "mean change of a pair's cosine against the reference", "cosine", None, (0.0, 2.0)
        ),
        drift(
            "centroid_shift_cosine_mean", centroid.format("mean cosine distance"), "cosine distance", None, (0.0, 2.0)
        ),
        drift(
            "centroid_shift_cosine_max", centroid.format("largest cosine distance"), "cosine distance", None, (0.0, 2.0)
        ),
        drift(
            "centroid_shift_euclidean_mean",
            centroid.format("mean euclidean distance"),
            "euclidean distance",
            None,
            (0.0, 2.0),
        ),
        drift("score", "overall drift from the reference (0 = none, 1 = unrelated geometry)", "[0, 1]", None, FRACTION),
        drift(
            "p_value",
            "two-sample test: chance that re-sampling the probe alone moves the space this much (small = it moved)",
            "probability",
            None,
            FRACTION,
        ),
        drift(
            "mmd2",
            "two-sample test statistic: MMD² between similarity profiles before and after (about 0 = no move)",
            "squared kernel distance",
            None,
            (-1.0, 2.0),
        ),
        drift("rank_improved_fraction", ranks.format("improved"), "fraction", True, FRACTION),
        drift("rank_worsened_fraction", ranks.format("worsened"), "fraction", False, FRACTION),
        drift(
            "rank_change_median",
            "median change of the first relevant rank against the reference (negative is better)",
            "ranks",
            False,
            UNBOUNDED,
        ),
        drift("delta/anisotropy", "geometry/anisotropy now − at the reference", "cosine", False, (-2.0, 2.0)),
        drift("delta/ndcg@10", "retrieval/ndcg@10 now − at the reference", "fraction", True, (-1.0, 1.0)),
        drift("delta/mrr@10", "retrieval/mrr@10 now − at the reference", "fraction", True, (-1.0, 1.0)),
        drift("delta/recall@10", "retrieval/recall@10 now − at the reference", "fraction", True, (-1.0, 1.0)),
        drift(
            "sae_features_moved",
            "base SAE features whose activation moved against the reference (paired signed-rank test, BH q < 0.05)",
            "features",
            None,
            NON_NEGATIVE,
        ),
        drift(
            "sae_pair_error_share",
            "share of the largest pair-similarity changes the base SAE attributes to no feature",
            "fraction",
            False,
            FRACTION,
        ),
    )


def _verdict() -> tuple[MetricSpec, ...]:
    """``verdict/<name>`` (this snapshot against the base) and ``verdict/previous/<name>`` (against the previous
    snapshot): :mod:`aquin_monitor.verdict`."""
    against = {"": "the base model", "previous/": "the previous snapshot"}
    change = "change of a fraction, in [−1, 1]"
    kinds = (
        ("ndcg@10_delta", "mean change of per-query NDCG@10 against {}", change, True, (-1.0, 1.0)),
        (
            "ci_low",
            "lower end of the 95 % paired bootstrap interval of that change (above 0: got better)",
            change,
            None,
            (-1.0, 1.0),
        ),
        ("ci_high", "upper end of that interval (below 0: got worse)", change, None, (-1.0, 1.0)),
        ("queries_better", "queries whose NDCG@10 rose against {}", "queries", True, NON_NEGATIVE),
        ("queries_worse", "queries whose NDCG@10 fell against {}", "queries", False, NON_NEGATIVE),
        ("queries_unchanged", "queries whose NDCG@10 stayed the same against {}", "queries", None, NON_NEGATIVE),
        (
            "direction",
            "+1 retrieval got better, −1 worse, 0 no detectable change (the interval holds 0)",
            "sign",
            True,
            (-1.0, 1.0),
        ),
    )
    return tuple(
        MetricSpec(
            name=f"verdict/{prefix}{name}",
            meaning=meaning.format(reference),
            unit=unit,
            higher_is_better=better,
            bounds=bounds,
        )
        for prefix, reference in against.items()
        for name, meaning, unit, better, bounds in kinds
    )


def _sae() -> tuple[MetricSpec, ...]:
    return (
        MetricSpec(
            name="sae/fvu",
            unit="fraction",
            higher_is_better=False,
            bounds=NON_NEGATIVE,
            meaning="variance the base model's SAE fails to reconstruct: rising = the space left the base dictionary "
            "(huge when the space collapses: its variance is the denominator)",
        ),
        MetricSpec(
            name="sae/cosine",
            unit="cosine",
            higher_is_better=True,
            bounds=COSINE,
            meaning="mean cos(embedding, SAE reconstruction): how well the base dictionary still fits (1 = perfectly)",
        ),
        MetricSpec(name="sae/l0", unit="features", bounds=NON_NEGATIVE, meaning="features active per text"),
        MetricSpec(
            name="sae/l0_effective", unit="features", bounds=NON_NEGATIVE, meaning="features active per text above 0.01"
        ),
        MetricSpec(
            name="sae/dead_fraction",
            unit="fraction",
            higher_is_better=False,
            bounds=FRACTION,
            meaning="base SAE features that no probe text fires any more",
        ),
    )


def _sae_eval() -> tuple[MetricSpec, ...]:
    """What ``aquin-monitor sae eval`` reports beside the logged ``sae/*`` numbers (aquin_monitor/sae/quality.py)."""

    def spec(name: str, unit: str, better: bool | None, bounds: Bounds, meaning: str) -> MetricSpec:
        return MetricSpec(name=name, unit=unit, higher_is_better=better, bounds=bounds, meaning=meaning)

    accuracy = "accuracy in [0, 1]"
    retrieval = (
        spec("sae/retrieval/original/ndcg@10", "fraction", True, FRACTION, "NDCG@10 with the embeddings x"),
        spec("sae/retrieval/original/recall@10", "fraction", True, FRACTION, "Recall@10 with the embeddings x"),
        spec("sae/retrieval/reconstructed/ndcg@10", "fraction", True, FRACTION, "NDCG@10 with the SAE's x̂"),
        spec("sae/retrieval/reconstructed/recall@10", "fraction", True, FRACTION, "Recall@10 with the SAE's x̂"),
        spec("sae/retrieval/kept_ndcg@10", "ratio", True, NON_NEGATIVE, "share of NDCG@10 the SAE's x̂ keeps"),
        spec("sae/pca/retrieval/reconstructed/ndcg@10", "fraction", True, FRACTION, "NDCG@10 with the PCA's x̂"),
        spec("sae/pca/retrieval/reconstructed/recall@10", "fraction", True, FRACTION, "Recall@10 with the PCA's x̂"),
        spec("sae/pca/retrieval/kept_ndcg@10", "ratio", True, NON_NEGATIVE, "share of NDCG@10 the PCA's x̂ keeps"),
    )
    return retrieval + (
        spec("sae/explained_variance", "fraction", True, UNBOUNDED, "1 − FVU"),
        spec("sae/dense_fraction", "fraction", False, FRACTION, "features firing on more than 10 % of the texts"),
        spec("sae/norm_ratio", "ratio", None, NON_NEGATIVE, "mean ‖x̂‖/‖x‖ (1 = norms kept)"),
        spec("sae/redundancy", "cosine", False, COSINE, "mean largest decoder cosine between two features"),
        spec("sae/n_texts", "texts", None, NON_NEGATIVE, "texts evaluated"),
        spec("sae/num_latents", "features", None, NON_NEGATIVE, "dictionary size"),
        spec("sae/k", "features", None, NON_NEGATIVE, "active features per text (TopK)"),
        spec("sae/pca/fvu", "fraction", False, FRACTION, "FVU of the rank-k PCA fitted on the corpus"),
        spec("sae/pca/cosine", "cosine", True, COSINE, "mean cos(x, x̂) of the rank-k PCA"),
        spec("sae/pca/n_components", "components", None, NON_NEGATIVE, "the PCA's rank (k, at most n and d)"),
        spec("sae/held_out/fvu", "fraction", False, UNBOUNDED, "FVU on the SAE's own held-out split"),
        spec("sae/held_out/cosine", "cosine", True, COSINE, "mean cos(x, x̂) on the SAE's own held-out split"),
        spec("sae/held_out/retrieval/kept_ndcg@10", "ratio", True, NON_NEGATIVE, "retrieval kept in its report"),
        spec("sae/held_out/stability/second_sae", "fraction", True, FRACTION, "seed stability in its report"),
        spec("sae/probe/<set>/sae@N", accuracy, True, FRACTION, "probe accuracy on the N best SAE features"),
        spec("sae/probe/<set>/embedding", accuracy, True, FRACTION, "probe accuracy on the embeddings"),
        spec("sae/probe/<set>/reconstruction", accuracy, True, FRACTION, "probe accuracy on the reconstructions"),
        spec("sae/probe/<set>/n_tasks", "classes", None, NON_NEGATIVE, "one-vs-rest tasks averaged"),
        spec("sae/stability/seeds", "fraction", True, FRACTION, "features found again by another seed's SAE"),
        spec("sae/stability/second_sae", "fraction", True, FRACTION, "features found again in the second SAE"),
    )


#: Every metric aquin-monitor logs, by family, in the order of ``docs/metrics.md``.
METRICS: tuple[MetricSpec, ...] = (
    _grad_norms()
    + _contrastive()
    + _optimizer_and_alarms()
    + _geometry()
    + _layers_and_attention()
    + _retrieval()
    + _drift()
    + _verdict()
    + _sae()
    + _sae_eval()
)


@lru_cache(maxsize=None)
def name_pattern(name: str) -> re.Pattern[str]:
    """A declared name as a regex matching the whole logged name; placeholders match their values.

    >>> bool(name_pattern("grad_norm/layer.NN/lora_A").match("grad_norm/layer.03/lora_A"))
    True
    >>> bool(name_pattern("drift/<vs>/cka").match("drift/other/cka"))
    False
    >>> bool(name_pattern("optim/lr").match("optim/lr/group.1"))
    False
    """
    parts = re.split("(" + "|".join(re.escape(p) for p in sorted(PLACEHOLDERS, key=len, reverse=True)) + ")", name)
    return re.compile("".join(PLACEHOLDERS.get(p, re.escape(p)) for p in parts) + r"\Z")


@lru_cache(maxsize=4096)
def find_metric(name: str) -> MetricSpec | None:
    """The declaration of a logged metric name (None for a name aquin-monitor does not log).

    >>> find_metric("layers/similarity.06").name, find_metric("custom/thing") is None
    ('layers/similarity.NN', True)
    """
    return next((spec for spec in METRICS if spec.pattern.match(name)), None)


def _reranked(name: str) -> MetricSpec | None:
    """For ``rerank/<when>/<metric>``: the declaration of ``retrieval/<metric>``."""
    spec = find_metric(name)
    if spec is None or not spec.name.endswith("<metric>"):
        return None
    return find_metric("retrieval/" + name.rsplit("/", 1)[1])


def metric_meaning(name: str) -> str:
    """One sentence saying what ``name`` measures ("" for a name not declared here).

    >>> metric_meaning("retrieval/ndcg@10")
    'graded ranking quality of the relevant documents in the top 10 (1 = ideal order)'
    >>> metric_meaning("rerank/before/recall@5")
    "fraction of each query's relevant documents found in the top 5, before reranking"
    >>> metric_meaning("custom/thing")
    ''
    """
    spec = find_metric(name)
    if spec is None:
        return ""
    inner = _reranked(name)
    return f"{inner.meaning}, {spec.meaning}" if inner is not None else spec.meaning


def higher_is_better(name: str) -> bool | None:
    """True / False when a larger value of ``name`` is better / worse; None when neither or not declared.
    A reranked metric (``rerank/after/ndcg@10``) goes the way of its retrieval metric."""
    inner = _reranked(name)
    if inner is not None:
        return inner.higher_is_better
    spec = find_metric(name)
    return None if spec is None else spec.higher_is_better
