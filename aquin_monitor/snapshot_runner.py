"""Checkpoint snapshots of the embedding space: what is measured (:class:`SnapshotRunner`) and when
(:class:`SnapshotSchedule`).

A snapshot is one pass of the probe set through the model: embeddings, every layer's pooled hidden
states and a sample of attentions, turned by :mod:`aquin_monitor.signals` into the geometry, layer,
attention, OOD and retrieval metrics of a :class:`~aquin_monitor.snapshot_record.Snapshot`, diffed against the
base and previous snapshots, saved under ``<run>/snapshots/<step>/`` and logged to the sinks.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from . import snapshot_keys as keys
from .failsoft import report_failure
from .progress import phase
from .search import faiss_available, neighbour_graph
from .signals.geometry import robust_ood_threshold
from .signals.neighbours import EXACT_KNN_MAX_POINTS, exact_knn
from .sinks.base import send_embeddings
from .snapshot_record import Snapshot, diff, list_snapshots
from .verdict import verdict_records

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from sentence_transformers import SentenceTransformer

    from .data import ProbeSet, RetrievalSet
    from .embedding_cache import CachedModel
    from .sae.drift import DriftExplanation
    from .sae.model import SparseAutoencoder
    from .sinks.base import Sink


@dataclass
class ProbePass:
    """What one pass of the probe through the model gives, rows in probe order: the final embeddings
    ``[n, d]``, every layer's pooled hidden states ``[L+1, n, d]`` and, for the attention sample, each
    head's entropy ``[m, L, H]`` (absolute and normalised by log(length); None without attentions)."""

    embeddings: np.ndarray
    layers: np.ndarray
    entropy: np.ndarray | None
    normalized_entropy: np.ndarray | None

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by field name (those present), as the embedding cache stores them."""
        return {name: value for name, value in vars(self).items() if value is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ProbePass:
        return cls(arrays["embeddings"], arrays["layers"], arrays.get("entropy"), arrays.get("normalized_entropy"))


class SnapshotRunner:
    """Probe set → every geometry, layer, attention, OOD and retrieval signal → :class:`Snapshot`.

    One forward pass per probe text yields the embeddings, every layer's pooled hidden states and (for
    ``max_attention_texts`` of them, evenly spaced over the probe: :func:`attention_sample`) every
    head's attention, in eval mode without gradients, on an inspection copy when LoRA adapters are
    present (merged; the training model is never mutated). Retrieval queries and documents reuse the
    probe's embeddings when the texts are in the probe and the model has no query/document prompts;
    anything else is encoded once.

    Args:
        probe: :class:`~aquin_monitor.data.ProbeSet` (texts, optional labels) or a list of texts;
            None: the retrieval set's queries and documents (:meth:`ProbeSet.from_retrieval`).
        retrieval: optional :class:`~aquin_monitor.data.RetrievalSet` for retrieval metrics.
        batch_size: texts per forward pass.
        max_attention_texts: how many probe texts (evenly spaced) also give every head's attention
            for the attention-entropy signals (eager attention is the most expensive part of a
            snapshot after the forward pass itself).
        ood_threshold: cosine distance to the probe centroid above which an input is flagged;
            None (default): :func:`robust_ood_threshold` of the probe's own distances.
        umap: compute 2-D UMAP coordinates (needs ``aquin-monitor[umap]``).
        seed: seeds UMAP and the sampled pairs of the histograms and diffs.
        show_progress: progress bars while encoding (count, total, time left).
        announce: one line on stderr as each snapshot starts (what it computes) and as it ends (its
            elapsed time), bars or not: a snapshot in a training run can take minutes.
        model_name: how snapshots (and the report) name the model.
        sae: the *base* model's sparse autoencoder (:func:`aquin_monitor.sae.load_sae`; ``"default"``:
            the one shipped for the bundled all-MiniLM-L6-v2). Each snapshot then logs ``sae/fvu`` (how
            far the space has moved out of the base dictionary), ``sae/dead_fraction``, ``sae/l0``,
            ``sae/l0_effective`` and each feature's firing frequency, and its diff against the base lists
            the features gained and lost (``sae/gained``, ``sae/lost`` in ``snapshot.json``) and explains the
            drift (:mod:`aquin_monitor.sae.drift`: the features whose activation moved, by a paired test with
            Benjamini-Hochberg, and the pairs whose cosine changed most, each change split into feature, bias
            and error terms; ``sae/drift_features``, ``sae/drift_pairs``, ``drift/<vs>/sae_features_moved``).
        sae_labels: a label per SAE feature for those lists; None: the SAE folder's ``features.json`` when
            ``sae`` is given by name, else no labels.

    Example::

        from aquin_monitor.data import read_probe
        from aquin_monitor.encoders import load_model
        from aquin_monitor.snapshot_runner import SnapshotRunner

        runner = SnapshotRunner(read_probe("probe.jsonl"), umap=False)
        snap = runner.take(load_model("default"), step=0, tag="base", run_dir="runs/x")
        print(snap.metrics["geometry/anisotropy"])
    """

    def __init__(
        self,
        probe: ProbeSet | Sequence[str] | None = None,
        retrieval: RetrievalSet | None = None,
        *,
        batch_size: int = 32,
        max_attention_texts: int = 32,
        ood_threshold: float | None = None,
        umap: bool = True,
        seed: int = 0,
        show_progress: bool = False,
        model_name: str = "",
        sae: SparseAutoencoder | str | None = None,
        announce: bool = True,
        sae_labels: Sequence[str | None] | None = None,
    ):
        from .data import ProbeSet

        if probe is None and retrieval is None:
            raise ValueError("SnapshotRunner needs a probe set, a retrieval set, or both")
        if probe is None:
            probe = ProbeSet.from_retrieval(cast("RetrievalSet", retrieval))  # not None: checked just above
        elif not hasattr(probe, "texts"):
            probe = ProbeSet.from_texts(cast("Sequence[str]", probe))
        probe_set = cast("ProbeSet", probe)  # anything with .texts is taken as a probe set (duck-typed)
        if len(probe_set.texts) < 3:
            raise ValueError(f"a probe needs at least 3 texts, got {len(probe_set.texts)}")
        self.probe = probe_set
        self.retrieval = retrieval
        self.batch_size = batch_size
        self.max_attention_texts = max_attention_texts
        self.ood_threshold = ood_threshold
        self.umap = umap
        self.seed = seed
        self.show_progress = show_progress
        self.announce = announce
        self.model_name = model_name
        if isinstance(sae, str):
            from .sae.model import feature_labels, load_sae

            name, sae = sae, load_sae(sae)
            sae_labels = sae_labels if sae_labels is not None else feature_labels(name, sae.num_latents)
        self.sae = cast("SparseAutoencoder | None", sae)  # a str was loaded just above
        self.sae_labels = sae_labels
        self.base: Snapshot | None = None
        self.previous: Snapshot | None = None

    def take(
        self,
        model: torch.nn.Module | CachedModel,
        step: int,
        *,
        tag: str = "checkpoint",
        model_name: str = "",
        run_dir: str | os.PathLike | None = None,
        diff_against_history: bool = True,
    ) -> Snapshot:
        """Compute a snapshot of ``model``; diff it against the base and previous snapshots; save it.

        ``model`` may be a :class:`~aquin_monitor.embedding_cache.CachedModel` (what ``inspect`` and
        ``diff`` pass): the probe pass and the retrieval embeddings then come from the embedding cache
        when this model's files have computed them before, and the model is loaded only on a miss.
        """
        from .embedding_cache import CachedModel
        from .encoders import has_lora, merged_copy

        def inspectable(module: torch.nn.Module) -> torch.nn.Module:
            return merged_copy(cast("SentenceTransformer", module)) if has_lora(module) else module

        started = time.perf_counter()
        self._say(f"snapshot at step {step} ({tag}): {self.plan()}")
        inspected = model.map(inspectable) if isinstance(model, CachedModel) else inspectable(model)
        snap = self.compute(inspected, step, tag=tag, model_name=model_name or self.model_name)
        if diff_against_history:
            self.attach_diffs(snap)
        if run_dir is not None:
            snap.save(run_dir)
        self._say(f"snapshot at step {step} ({tag}) done in {time.perf_counter() - started:.1f} s")
        return snap

    def plan(self) -> str:
        """What a snapshot computes, in words (the line :meth:`take` prints as it starts).

        >>> SnapshotRunner(["a", "b", "c"], umap=False).plan()
        'probe pass over 3 texts (hidden states, attention of 3)'
        """
        n = len(self.probe.texts)
        steps = [f"probe pass over {n:,} texts (hidden states, attention of {min(n, self.max_attention_texts)})"]
        if self.umap and n >= 10:
            steps.append("UMAP layout")
        if self.retrieval is not None:
            queries, documents = len(self.retrieval.query_texts()), len(self.retrieval.doc_texts())
            steps.append(f"retrieval: {queries:,} queries, {documents:,} documents")
        if self.sae is not None:
            steps.append(f"SAE of {self.sae.num_latents:,} features")
        return "; ".join(steps)

    def _say(self, line: str) -> None:
        if self.announce:
            print(f"aquin-monitor: {line}", file=sys.stderr, flush=True)

    def record(
        self,
        model: torch.nn.Module,
        step: int,
        *,
        tag: str = "checkpoint",
        run_dir: str | os.PathLike | None = None,
        sinks: Sequence[Sink] = (),
        model_name: str = "",
        strict: bool = False,
    ) -> Snapshot | None:
        """:meth:`take` a snapshot and log it to ``sinks``; a failure warns and returns None (checkpoint intact).

        Logged: the record as a summary (every metric a scalar at ``step`` on the dashboards, a line
        of ``snapshots.jsonl`` in the files), the figures of :data:`aquin_monitor.plots.SNAPSHOT_FIGURES`
        it has arrays for, and the probe embeddings with their labels for TensorBoard's projector.
        """
        try:
            snap = self.take(model, step, tag=tag, model_name=model_name, run_dir=run_dir)
            labels = self.probe.labels
            figures = snapshot_figures(snap) if sinks else {}
            for sink in sinks:
                sink.log_summary({"tag": tag, **snap.metrics}, step)  # scalars on dashboards, snapshots.jsonl in files
                send_embeddings(
                    sink,
                    "probe",
                    snap.arrays[keys.EMBEDDINGS],
                    [str(v) for v in labels] if labels else None,
                    step,
                    texts=self.probe.texts,
                )
                for name, figure in figures.items():
                    sink.log_figure(f"snapshot/{name}", figure, step)
            return snap
        except Exception as exc:  # noqa: BLE001 - a failed snapshot must not cost the checkpoint or the run
            report_failure(f"snapshot at step {step}", exc, strict=strict, outcome="training goes on")
            return None

    def restore(self, run_dir: str | os.PathLike, step: int) -> bool:
        """On resume: reload the base and the latest snapshot at or before ``step`` so diffs continue."""
        folders = [f for f in list_snapshots(run_dir) if int(f.name) <= step]
        if not folders:
            return False
        self.base = Snapshot.load(folders[0])
        self.previous = Snapshot.load(folders[-1])
        return True

    def attach_diffs(self, snap: Snapshot) -> None:
        """Add the diffs and the retrieval verdicts (:mod:`aquin_monitor.verdict`) against the base and the
        previous snapshot to ``snap``; it becomes the previous."""
        if self.base is not None:
            d = diff(self.base, snap, name="base", seed=self.seed)
            snap.metrics.update(d.metrics)
            snap.arrays.update(d.arrays)
            snap.details[keys.DIFF_BASE] = d.details
            if self.sae is not None and keys.SAE_FREQUENCY in self.base.arrays and keys.SAE_FREQUENCY in snap.arrays:
                snap.details.update(self._sae_movers(self.base, snap))
            self._attach_sae_drift(self.base, snap, "base")
        if self.previous is not None and self.previous is not self.base:
            snap.metrics.update(diff(self.previous, snap, name="previous", seed=self.seed).metrics)
            self._attach_sae_drift(self.previous, snap, "previous")
        verdict_metrics, verdicts = verdict_records(snap, self.base, self.previous, seed=self.seed)
        if verdicts:  # per-query NDCG@10 paired against the base (and the previous snapshot)
            snap.metrics.update(verdict_metrics)
            snap.details[keys.VERDICT] = verdicts
        if self.base is None:
            self.base = snap
        self.previous = snap

    def compute(
        self, model: torch.nn.Module | CachedModel, step: int, *, tag: str = "checkpoint", model_name: str = ""
    ) -> Snapshot:
        """The snapshot of ``model`` at ``step``, without diffs (see :meth:`take`)."""
        probe_pass = self.probe_pass(model)
        emb = probe_pass.embeddings
        snap = Snapshot(step=int(step), tag=tag, model=model_name, arrays={keys.EMBEDDINGS: emb})
        if self.probe.labels is not None:
            snap.arrays[keys.LABELS] = np.asarray([str(v) for v in self.probe.labels])
        self._add_geometry(snap, emb)
        self._add_layers(snap, probe_pass)
        if self.umap and len(emb) >= 10:
            try:
                with phase(f"Snapshot: UMAP 2-D layout of {len(emb)} probe texts", self.show_progress):
                    snap.arrays[keys.UMAP] = umap_2d(emb, self.seed)
            except Exception as exc:  # noqa: BLE001 - a projection is not worth losing the snapshot
                warnings.warn(
                    f"aquin-monitor: UMAP failed, snapshot kept without it: {exc!r}", RuntimeWarning, stacklevel=2
                )
        retrieval_embeddings = self._add_retrieval(snap, model, emb) if self.retrieval is not None else None
        if self.sae is not None:
            self._add_sae(snap, emb, retrieval_embeddings)
        return snap

    def _add_sae(
        self, snap: Snapshot, emb: np.ndarray, retrieval_embeddings: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        from .sae.monitoring import snapshot_signals

        assert self.sae is not None, "_add_sae runs only when the runner holds an SAE"
        if emb.shape[1] != self.sae.d_in:  # an SAE of another model: the snapshot is still worth keeping
            warnings.warn(
                f"aquin-monitor: the SAE reads {self.sae.d_in}-dimensional embeddings, "
                f"this model gives {emb.shape[1]}: no sae/ signals",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        signals = snapshot_signals(self.sae, emb, self.probe.texts)
        snap.metrics.update(signals.metrics)
        snap.arrays.update(signals.arrays())
        positions = self._sae_pair_positions()
        if retrieval_embeddings is not None and positions:  # the pairs a later drift explanation splits
            q_emb, d_emb = retrieval_embeddings
            snap.arrays[keys.SAE_PAIR_QUERIES] = np.asarray(q_emb[[q for q, _ in positions]], dtype=np.float32)
            snap.arrays[keys.SAE_PAIR_DOCUMENTS] = np.asarray(d_emb[[d for _, d in positions]], dtype=np.float32)

    def _sae_pair_positions(self) -> list[tuple[int, int]]:
        """The retrieval set's relevant (query, document) positions whose SAE split a drift explanation lists."""
        from .sae.drift import relevant_pairs

        return relevant_pairs(self.retrieval.positional()[0]) if self.retrieval is not None else []

    def explain_sae_drift(self, reference: Snapshot, now: Snapshot) -> DriftExplanation | None:
        """The drift from ``reference`` to ``now`` read through the runner's (base) SAE
        (:mod:`aquin_monitor.sae.drift`): the features whose activation moved on the probe, and the pairs
        whose cosine changed most, each change split exactly into feature, bias and error terms.

        Pairs are the retrieval set's relevant query-document pairs when both snapshots carry their
        embeddings, else pairs of probe texts. None without an SAE or when the SAE does not read these
        embeddings (another width).
        """
        from .sae.drift import PairSet, explain_drift

        before, after = reference.arrays.get(keys.EMBEDDINGS), now.arrays.get(keys.EMBEDDINGS)
        if self.sae is None or before is None or after is None or before.shape[-1] != self.sae.d_in:
            return None
        pairs = None
        queries = (reference.arrays.get(keys.SAE_PAIR_QUERIES), now.arrays.get(keys.SAE_PAIR_QUERIES))
        documents = (reference.arrays.get(keys.SAE_PAIR_DOCUMENTS), now.arrays.get(keys.SAE_PAIR_DOCUMENTS))
        positions = self._sae_pair_positions()
        stored = [a for a in (*queries, *documents) if a is not None]
        if len(stored) == 4 and all(a.shape == (len(positions), self.sae.d_in) for a in stored):
            assert self.retrieval is not None  # positions come from it
            q_texts, d_texts = self.retrieval.query_texts(), self.retrieval.doc_texts()
            texts = [(q_texts[q], d_texts[d]) for q, d in positions]
            pairs = PairSet(queries[0], documents[0], queries[1], documents[1], texts, positions)  # type: ignore[arg-type]
        return explain_drift(self.sae, before, after, self.probe.texts, pairs=pairs, labels=self.sae_labels)

    def _attach_sae_drift(self, reference: Snapshot, snap: Snapshot, name: str) -> None:
        """Add the SAE's drift explanation against ``reference`` to ``snap``: the metrics always, the lists
        against the base only. A failure here warns and leaves the rest of the snapshot as it is."""
        try:
            explanation = self.explain_sae_drift(reference, snap)
        except Exception as exc:  # noqa: BLE001 - the explanation is not worth the snapshot
            report_failure(
                f"the SAE drift explanation against the {name} (step {snap.step})",
                exc,
                strict=False,
                outcome="the snapshot is kept without it",
            )
            return
        if explanation is None:
            return
        snap.metrics.update(explanation.metrics(f"drift/{name}"))
        if name == "base":
            snap.details.update(explanation.details())

    def _sae_movers(self, base: Snapshot, now: Snapshot) -> dict[str, list]:
        """Features gained and lost from ``base`` to ``now`` (both snapshots carry the SAE arrays)."""
        from .sae.monitoring import SaeSnapshot, feature_movers

        movers = feature_movers(
            SaeSnapshot.from_arrays(base.arrays),
            SaeSnapshot.from_arrays(now.arrays),
            self.probe.texts,
            labels=self.sae_labels,
        )
        return {keys.SAE_GAINED: movers["gained"], keys.SAE_LOST: movers["lost"]}

    def probe_pass(self, model: torch.nn.Module | CachedModel) -> ProbePass:
        """:meth:`forward`, read from the embedding cache for a :class:`~aquin_monitor.embedding_cache.CachedModel`
        (keyed by its files, the probe texts, the attention sample and the batch size)."""
        from .embedding_cache import CachedModel

        if not isinstance(model, CachedModel):
            return self.forward(model)
        options = {"kind": "probe_pass", "attention_texts": self.max_attention_texts, "batch_size": self.batch_size}
        return ProbePass.from_arrays(
            model.arrays(self.probe.texts, options, lambda module: self.forward(module).arrays())
        )

    def forward(self, model: torch.nn.Module) -> ProbePass:
        """One pass of the probe: the attention sample in small batches, the rest in ``batch_size`` ones."""
        from .encoders import iter_forward
        from .signals.layers import attention_entropy

        texts = self.probe.texts
        sample = set(attention_sample(len(texts), self.max_attention_texts).tolist())
        embeddings, layers, entropy, normalized, order = [], [], [], [], []
        # the attention sample is spread over the probe, so its lengths vary as much as the probe's: small
        # batches of similar length keep its padding (which the eager attention pays for too) near zero
        for with_attention in (True, False):
            indices = [i for i in range(len(texts)) if (i in sample) == with_attention]
            # longest first, as SentenceTransformer.encode does: batches of similar length pad least
            chunk = sorted(indices, key=lambda i: -len(texts[i]))
            order.extend(chunk)
            size = max(1, min(self.batch_size, 8)) if with_attention else self.batch_size
            batches = (
                iter_forward(
                    cast("SentenceTransformer", model),
                    [texts[i] for i in chunk],
                    batch_size=size,
                    hidden_states=True,
                    attentions=with_attention,
                    show_progress=self.show_progress,
                    desc=f"Snapshot: probe forward passes{' with attentions' if with_attention else ''}",
                )
                if chunk
                else ()
            )
            for batch in batches:
                assert batch.layer_embeddings is not None  # asked for with hidden_states=True
                embeddings.append(batch.embeddings.numpy())
                layers.append(batch.layer_embeddings.numpy())
                if batch.attentions is not None:
                    ent = attention_entropy(batch.attentions, batch.attention_mask)
                    entropy.append(ent.entropy)
                    normalized.append(ent.normalized)
        restore = np.argsort(np.asarray(order))
        return ProbePass(
            embeddings=np.concatenate(embeddings).astype(np.float32)[restore],
            layers=np.concatenate(layers, axis=1)[:, restore],
            entropy=np.concatenate(entropy) if entropy else None,
            normalized_entropy=np.concatenate(normalized) if normalized else None,
        )

    def _add_geometry(self, snap: Snapshot, emb: np.ndarray) -> None:
        from .signals.geometry import geometry_summary, ood_scores

        threshold = self.ood_threshold
        if threshold is None:
            threshold = robust_ood_threshold(ood_scores(emb, threshold=2.0).scores)
        geo = geometry_summary(emb, self.probe.labels, ood_threshold=threshold, seed=self.seed)
        snap.metrics["geometry/ood_threshold"] = threshold
        snap.metrics.update(geo.as_metrics("geometry"))
        snap.arrays[keys.PAIR_HIST_COUNTS] = geo.histogram.counts
        snap.arrays[keys.PAIR_HIST_EDGES] = geo.histogram.edges
        snap.arrays[keys.PAIR_HIST_BASELINE] = geo.histogram.baseline_probabilities
        snap.arrays[keys.PCA_CUMULATIVE] = geo.intrinsic.cumulative_explained_variance
        snap.arrays[keys.OOD_SCORE] = geo.ood.scores.astype(np.float32)
        flagged = geo.ood.flagged
        order: np.ndarray | list[int] = np.argsort(-geo.ood.scores[flagged]) if len(flagged) else []
        snap.details[keys.OOD_FLAGGED] = [
            {
                "index": int(flagged[k]),
                "text": self.probe.texts[int(flagged[k])],
                "score": float(geo.ood.scores[flagged[k]]),
            }
            for k in list(order)[:50]
        ]
        snap.details[keys.ROGUE_DIMENSIONS] = _rogue_details(geo.rogue)

    def _add_layers(self, snap: Snapshot, probe_pass: ProbePass) -> None:
        from .signals.layers import layerwise_similarity, summarize_attention_entropy

        lw = layerwise_similarity(probe_pass.layers)
        snap.metrics.update(lw.as_metrics("layers"))
        snap.arrays[keys.LAYER_SIMILARITY] = np.asarray(lw.similarity, dtype=np.float32)
        if probe_pass.entropy is None:
            return
        summary = summarize_attention_entropy(probe_pass.entropy, probe_pass.normalized_entropy)
        snap.metrics.update(summary.as_metrics("attention"))
        snap.arrays[keys.ATTENTION_ENTROPY] = summary.entropy.astype(np.float32)
        snap.arrays[keys.ATTENTION_ENTROPY_NORMALIZED] = summary.normalized.astype(np.float32)
        snap.details[keys.FLAGGED_HEADS] = [
            {"layer": int(l), "head": int(h), "kind": "collapsed", "entropy": float(summary.entropy[l, h])}
            for l, h in summary.collapsed_heads
        ] + [
            {"layer": int(l), "head": int(h), "kind": "uniform", "entropy": float(summary.entropy[l, h])}
            for l, h in summary.dead_heads
        ]

    def _retrieval_embeddings(
        self, model: torch.nn.Module | CachedModel, emb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Query and document embeddings: from the cache for a CachedModel (the entries ``eval`` shares),
        else the probe's rows where the texts are in the probe and the model has no prompts, else encoded."""
        from .embedding_cache import CachedModel
        from .encoders import encode, retrieval_prompt_names

        assert self.retrieval is not None, "retrieval signals are taken only when the runner holds a retrieval set"
        queries, documents = self.retrieval.query_texts(), self.retrieval.doc_texts()
        if isinstance(model, CachedModel):
            q_emb, d_emb, _ = model.retrieval_embeddings(
                queries, documents, batch_size=self.batch_size, show_progress=self.show_progress
            )
            return q_emb, d_emb
        q_prompt, d_prompt = retrieval_prompt_names(cast("SentenceTransformer", model))
        index = {t: i for i, t in enumerate(self.probe.texts)}

        def embed(batch_texts: list[str], prompt_name: str | None) -> np.ndarray:
            if prompt_name is None and all(t in index for t in batch_texts):
                return emb[[index[t] for t in batch_texts]]
            return encode(
                cast("SentenceTransformer", model),
                batch_texts,
                prompt_name=prompt_name,
                batch_size=self.batch_size,
                show_progress=self.show_progress,
                desc="Snapshot: encoding retrieval texts",
            )

        return embed(queries, q_prompt), embed(documents, d_prompt)

    def _add_retrieval(
        self, snap: Snapshot, model: torch.nn.Module | CachedModel, emb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the retrieval metrics and arrays to ``snap``; return the query and document embeddings."""
        q_emb, d_emb = self._retrieval_embeddings(model, emb)
        assert self.retrieval is not None  # _retrieval_embeddings checked it
        report, by_category, _ = evaluate_retrieval_set(self.retrieval, q_emb, d_emb)
        snap.metrics.update(report.as_metrics())
        snap.arrays[keys.FIRST_RANK] = np.asarray(report.first_rank, dtype=np.float64)
        snap.arrays[keys.HARD_NEGATIVE_GAP] = np.asarray(report.hard_negative_gap, dtype=np.float32)
        if report.ndcg_k == 10:  # the per-query scores behind retrieval/ndcg@10, paired by the verdict
            snap.arrays[keys.QUERY_NDCG] = np.asarray(report.ndcg, dtype=np.float64)
        if by_category:
            snap.details[keys.RETRIEVAL_BY_CATEGORY] = by_category
        return q_emb, d_emb


class SnapshotSchedule:
    """When a run's snapshots are taken: the base model as training starts, every ``every``-th
    checkpoint save, and the model as training ends, never twice at one step. On resume, the base and
    latest snapshots at or before the resumed step are reloaded from the run folder so diffs continue.

    Both trainer callbacks go through one schedule (held by their :class:`~aquin_monitor.monitor.StepMonitor`),
    so they snapshot at the same steps.

    >>> schedule = SnapshotSchedule(runner=None, every=2)
    >>> schedule.at_start(None, 0), schedule.at_save(10), schedule.at_save(20)
    ('base', False, True)
    >>> schedule.taken(20); schedule.at_end(20), schedule.at_end(25)
    (False, True)
    """

    def __init__(self, runner: SnapshotRunner, every: int = 1):
        if every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {every}")
        self.runner = runner
        self.every = every
        self.saves = 0
        self.last_step: int | None = None

    def at_start(self, run_dir: str | os.PathLike | None, step: int) -> str | None:
        """The tag of the snapshot to take as training starts at ``step``; None when there is nothing to take.

        On resume the history is reloaded first; a resumed step without its snapshot (the run was
        killed while taking it, or ``every`` > 1 skipped it) gets one now, so the series has no gap.
        """
        if step == 0:
            return "base"
        if (
            run_dir is not None
            and self.runner.restore(run_dir, step)
            and self.runner.previous is not None
            and self.runner.previous.step == step
        ):
            return None
        return "checkpoint"

    def at_save(self, step: int) -> bool:
        """A checkpoint was saved at ``step``: whether to snapshot it."""
        self.saves += 1
        return self.saves % self.every == 0 and step != self.last_step

    def at_end(self, step: int) -> bool:
        """Training ended at ``step``: whether to snapshot (not when one was taken at this step)."""
        return step != self.last_step

    def taken(self, step: int) -> None:
        """Note that a snapshot was taken (or attempted) at ``step``."""
        self.last_step = step


def snapshot_figures(snap: Snapshot) -> dict[str, Figure]:
    """The figures of :data:`aquin_monitor.plots.SNAPSHOT_FIGURES` that ``snap`` has arrays for, by name.

    One figure that fails to draw is left out with a warning; the others are kept.
    """
    from . import plots

    inputs = plots.snapshot_figure_inputs(snap.arrays, snap.metrics, snap.details)
    figures = {}
    for spec in plots.SNAPSHOT_FIGURES:
        if any(key not in inputs for key in spec.needs):
            continue
        try:
            figures[spec.name] = spec.draw(inputs)
        except plots.NoDataError:
            continue
        except Exception as exc:  # noqa: BLE001 - one figure is not worth the others
            warnings.warn(
                f"aquin-monitor: figure {spec.name} of the snapshot at step {snap.step} not drawn: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )
    return figures


def evaluate_retrieval_set(retrieval: RetrievalSet, q_emb: np.ndarray, d_emb: np.ndarray, *, index: str = "auto"):
    """The retrieval metrics of a :class:`~aquin_monitor.data.RetrievalSet` embedded as ``q_emb`` / ``d_emb``
    (rows in its query and document order), its per-category figures and how the documents were searched.

    Categories per query: each query counts in its category. Categories per pair (SICK-style files):
    a query counts once overall, against all its relevant documents, and once in each category of its
    pairs, against that category's relevant documents only (:meth:`RetrievalSet.category_rows`).
    Documents are ranked through one :class:`~aquin_monitor.search.SearchIndex` (``index``: auto, exact,
    ivf, hnsw); ``auto`` on a corpus up to :data:`~aquin_monitor.search.EXACT_MAX_DOCS` documents is the
    exact full scan of :func:`~aquin_monitor.signals.retrieval.retrieval_metrics`.

    Returns:
        ``(report, by_category, search)``: the :class:`~aquin_monitor.signals.retrieval.RetrievalReport`,
        ``{category: {metric: value}}`` (empty without categories) and the
        :class:`~aquin_monitor.search.SearchReport` (recall@10 of an approximate index).
    """
    from .search import SearchIndex

    relevant, negatives, categories = retrieval.positional()
    searcher = SearchIndex(d_emb, index=index, expected_queries=len(q_emb))
    report, search = searcher.retrieval_report(
        q_emb, relevant, categories=categories, hard_negatives=negatives if any(negatives) else None
    )
    split = retrieval.positional_category_rows()
    if split is not None:
        rows, row_relevant, row_negatives, row_categories = split
        by_category = searcher.retrieval_report(
            q_emb[rows],
            row_relevant,
            categories=row_categories,
            hard_negatives=row_negatives if any(row_negatives) else None,
        )[0].by_category()
    else:
        by_category = report.by_category() if categories else {}
    return report, {str(k): v for k, v in by_category.items()}, search


def _rogue_details(rogue) -> list[dict]:
    total = float(np.clip(rogue.contributions, 0, None).sum()) or 1.0
    return [
        {"dim": int(d), "share": float(max(c, 0.0) / total)}
        for d, c in zip(rogue.top_dimensions, rogue.top_contributions)
    ]


def attention_sample(n: int, k: int) -> np.ndarray:
    """Indices of the ``k`` probe texts (of ``n``) whose attentions a snapshot keeps: evenly spaced.

    Attentions need eager attention, which costs several times the fused kernel; the per-head
    entropy is a mean over texts and tokens, so a sample spread over the whole probe (not its first
    texts, which a file sorted by label would fill with one class) estimates it well.

    >>> attention_sample(10, 4).tolist(), attention_sample(3, 8).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def umap_2d(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP coordinates ``[n, 2]`` of the cosine geometry of ``embeddings`` (seeded, hence single-threaded).

    Cosine neighbours are the euclidean neighbours of the unit vectors. Up to ``EXACT_KNN_MAX_POINTS``
    they come from matrix products (:func:`exact_knn`) and are handed to umap as precomputed: below
    4,096 points umap's own exact path would compute every pair with a Python call per pair, and the
    graph and coordinates are those of that path, bit for bit (``tests/test_snapshot_runner.py``); above
    4,096 points umap would otherwise use its approximate nearest-neighbour descent. Beyond
    ``EXACT_KNN_MAX_POINTS`` the graph comes from faiss (:func:`aquin_monitor.search.neighbour_graph`)
    when it is installed, else from umap's own search. 100 epochs
    instead of umap's 500 (the README's costs table gives the trustworthiness measured for that choice).
    """
    from ._optional import require

    umap = require("umap", "UMAP coordinates in snapshots")
    n = embeddings.shape[0]
    k = min(15, n - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        if n <= EXACT_KNN_MAX_POINTS:
            knn: tuple[np.ndarray, np.ndarray] | None = exact_knn(unit.astype(np.float64), k)
        else:  # faiss (exact up to search.EXACT_MAX_DOCS points, IVF beyond) when installed, else umap's own search
            knn = neighbour_graph(unit.astype(np.float32), k) if faiss_available() else None
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=k,
            n_epochs=100,
            random_state=seed,
            init="spectral" if n > 20 else "random",
            precomputed_knn=(*knn, None) if knn is not None else (None, None, None),
        )
        return reducer.fit_transform(unit).astype(np.float32)
