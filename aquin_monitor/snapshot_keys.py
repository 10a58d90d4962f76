"""The names of a snapshot's arrays (``arrays.npz``) and structured details (``snapshot.json``), written once.

The snapshot runner and :func:`aquin_monitor.snapshot_record.diff` write these keys; the figures
(:mod:`aquin_monitor.plots`), the report and the SAE monitoring read them back. Each family's keys are
listed in :data:`ARRAY_FAMILIES`; a test checks that a real snapshot writes no array outside them.
Ground floor: imports nothing from the package.

>>> PAIR_HIST_COUNTS, SAE_FREQUENCY, ARRAY_FAMILIES["retrieval"]
('pair_hist_counts', 'sae/frequency', ('first_rank', 'hard_negative_gap', 'query_ndcg@10'))
"""

from __future__ import annotations

# -- the probe pass -------------------------------------------------------------------------------
#: ``[n, d]`` float32 final embeddings of the probe texts, in probe order.
EMBEDDINGS = "embeddings"
#: ``[n]`` str: the probe's labels (when it has them).
LABELS = "labels"
#: ``[n, 2]`` float32 UMAP coordinates (when UMAP is on).
UMAP = "umap"

# -- geometry -------------------------------------------------------------------------------------
#: Histogram of sampled pair cosines: ``[bins]`` counts, ``[bins + 1]`` edges, ``[bins]`` uniform-sphere probabilities.
PAIR_HIST_COUNTS = "pair_hist_counts"
PAIR_HIST_EDGES = "pair_hist_edges"
PAIR_HIST_BASELINE = "pair_hist_baseline"
#: ``[k]`` cumulative explained variance of the principal components.
PCA_CUMULATIVE = "pca_cumulative"
#: ``[n]`` float32 cosine distance of each probe text to the probe centroid.
OOD_SCORE = "ood_score"

# -- layers and attention -------------------------------------------------------------------------
#: ``[L + 1]`` float32 mean pairwise cosine of each layer's pooled hidden states.
LAYER_SIMILARITY = "layer_similarity"
#: ``[L, H]`` float32 mean attention entropy per head (nats), and normalised by log(length).
ATTENTION_ENTROPY = "attention_entropy"
ATTENTION_ENTROPY_NORMALIZED = "attention_entropy_normalized"

# -- retrieval ------------------------------------------------------------------------------------
#: ``[queries]`` float64 rank of each query's first relevant document; float32 hard-negative gap per query.
FIRST_RANK = "first_rank"
HARD_NEGATIVE_GAP = "hard_negative_gap"
#: ``[queries]`` float64 NDCG@10 of each query (NaN for a query without a relevant document): what the verdict pairs.
QUERY_NDCG = "query_ndcg@10"

# -- drift against the base (written by ``diff``) -------------------------------------------------
#: Label centroids of both spaces on the base's first two principal axes, and their labels.
CENTROID_BASE_2D = "centroid_base_2d"
CENTROID_NOW_2D = "centroid_now_2d"
CENTROID_LABELS = "centroid_labels"
#: Cosines of the sampled pairs in the base space and now.
SIM_BASE_VALUES = "sim_base_values"
SIM_NOW_VALUES = "sim_now_values"
#: First relevant ranks at the base and now.
RANK_BEFORE = "rank_before"
RANK_AFTER = "rank_after"

# -- SAE (the base model's dictionary) ------------------------------------------------------------
#: ``[features]`` firing frequency and mean activation; ``[features, k]`` top probe rows and their values.
SAE_FREQUENCY = "sae/frequency"
SAE_MEAN_ACTIVATION = "sae/mean_activation"
SAE_TOP_ROWS = "sae/top_rows"
SAE_TOP_VALUES = "sae/top_values"
#: ``[m, d]`` float32 embeddings of the retrieval set's relevant pairs (query rows, document rows; at most
#: 1,000 pairs, evenly spaced), kept so a later snapshot can split each pair's cosine change into SAE features.
SAE_PAIR_QUERIES = "sae/pair_queries"
SAE_PAIR_DOCUMENTS = "sae/pair_documents"

#: Every array key by family.
ARRAY_FAMILIES: dict[str, tuple[str, ...]] = {
    "probe": (EMBEDDINGS, LABELS, UMAP),
    "geometry": (PAIR_HIST_COUNTS, PAIR_HIST_EDGES, PAIR_HIST_BASELINE, PCA_CUMULATIVE, OOD_SCORE),
    "layers": (LAYER_SIMILARITY, ATTENTION_ENTROPY, ATTENTION_ENTROPY_NORMALIZED),
    "retrieval": (FIRST_RANK, HARD_NEGATIVE_GAP, QUERY_NDCG),
    "drift": (
        CENTROID_BASE_2D,
        CENTROID_NOW_2D,
        CENTROID_LABELS,
        SIM_BASE_VALUES,
        SIM_NOW_VALUES,
        RANK_BEFORE,
        RANK_AFTER,
    ),
    "sae": (SAE_FREQUENCY, SAE_MEAN_ACTIVATION, SAE_TOP_ROWS, SAE_TOP_VALUES, SAE_PAIR_QUERIES, SAE_PAIR_DOCUMENTS),
}

# -- structured details (snapshot.json "details") --------------------------------------------------
#: ``[{"index", "text", "score"}]`` the probe texts flagged out-of-distribution, farthest first.
OOD_FLAGGED = "ood_flagged"
#: ``[{"dim", "share"}]`` the dimensions carrying most of the anisotropy.
ROGUE_DIMENSIONS = "rogue_dimensions"
#: ``[{"layer", "head", "kind", "entropy"}]`` attention heads flagged collapsed or uniform.
FLAGGED_HEADS = "flagged_heads"
#: ``{category: {metric: value}}`` retrieval metrics per category.
RETRIEVAL_BY_CATEGORY = "retrieval_by_category"
#: The diff against the base's details (``{"centroid_shift": {label: distance}}``).
DIFF_BASE = "diff_base"
#: SAE features gained / lost against the base: ``[{"feature", "frequency_before", "frequency_after", "top_texts"}]``.
SAE_GAINED = "sae/gained"
SAE_LOST = "sae/lost"
#: The retrieval verdict against the base and the previous snapshot (:mod:`aquin_monitor.verdict`):
#: ``{"base": {...}, "previous": {...}}``, each with its sentence and numbers.
VERDICT = "verdict"
#: Drift explained by the base SAE (:mod:`aquin_monitor.sae.drift`): the features whose activation moved
#: against the base (paired test, Benjamini-Hochberg) and the pairs whose cosine changed most, split into
#: feature, bias and error terms.
SAE_DRIFT_FEATURES = "sae/drift_features"
SAE_DRIFT_PAIRS = "sae/drift_pairs"

DETAIL_KEYS = (
    OOD_FLAGGED,
    ROGUE_DIMENSIONS,
    FLAGGED_HEADS,
    RETRIEVAL_BY_CATEGORY,
    DIFF_BASE,
    SAE_GAINED,
    SAE_LOST,
    VERDICT,
    SAE_DRIFT_FEATURES,
    SAE_DRIFT_PAIRS,
)
