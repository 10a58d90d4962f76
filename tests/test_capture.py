"""The loss wrapper reads the similarity matrix the loss computed without changing loss or gradients."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer, losses
from torch.utils._python_dispatch import TorchDispatchMode

from aquin_monitor.capture import ContrastiveTap, monitored, report_similarity, report_triplet
from aquin_monitor.losses import info_nce, nt_xent, triplet
from aquin_monitor.signals.contrastive import STAT_FIELDS, finalize, similarity_sums

TEXTS = [
    "the cat sat on the mat",
    "dogs bark at night",
    "a bank raised its interest rates",
    "the river bank was muddy",
    "she plays the violin",
    "stock markets fell sharply",
    "rain is expected tomorrow",
    "he scored two goals",
]
POSITIVES = [
    "a cat is sitting",
    "a dog barking",
    "interest rates went up",
    "mud on the river side",
    "music on a violin",
    "shares dropped",
    "the forecast says rain",
    "a football match",
]
NEGATIVES = list(reversed(TEXTS))


def _load(path):
    """The tiny model with dropout off, so the reference embeddings equal those the loss saw."""
    model = SentenceTransformer(path, device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    return model


def _features(model, columns):
    return [model.preprocess(col) for col in columns]


def _loss_and_grads(model, loss_fn, columns):
    model.zero_grad(set_to_none=True)
    value = loss_fn(_features(model, columns), torch.tensor([]))
    value.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return value.detach(), grads


def _embeddings(model, texts):
    feats = model.preprocess(texts)
    return model(feats)["sentence_embedding"]


def _reference_stats(q, candidates, n_blocks):
    """Hand computation over the full cosine matrix: diagonal = positive, own hard negatives at k*B + i."""
    s = F.normalize(q, dim=-1) @ F.normalize(candidates, dim=-1).T
    b = q.shape[0]
    pos, neg, hard, hardest, acc = [], [], [], [], []
    for i in range(b):
        own_hard = {k * b + i for k in range(1, n_blocks)}
        others = [j for j in range(s.shape[1]) if j != i]
        pos.append(s[i, i].item())
        neg.extend(s[i, j].item() for j in others if j not in own_hard)
        hard.extend(s[i, j].item() for j in own_hard)
        hardest.append(max(s[i, j].item() for j in others))
        acc.append(float(s[i].argmax().item() == i))
    out = {
        "pos_sim": sum(pos) / b,
        "neg_sim": sum(neg) / len(neg),
        "hardest_neg_sim": sum(hardest) / b,
        "in_batch_acc": sum(acc) / b,
    }
    if hard:
        out["hard_neg_sim"] = sum(hard) / len(hard)
    return out


def _make_loss(kind, model):
    if kind == "mnrl":
        return losses.MultipleNegativesRankingLoss(model)
    if kind == "symmetric":
        return losses.MultipleNegativesSymmetricRankingLoss(model)
    if kind == "cached":
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=3)
    if kind == "matryoshka":
        return losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), matryoshka_dims=[32, 16])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["mnrl", "symmetric", "cached", "matryoshka"])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_mnrl_family_is_bit_identical_and_decomposed(tiny_mean_model, kind, with_negatives):
    columns = [TEXTS, POSITIVES] + ([NEGATIVES] if with_negatives else [])
    model = _load(tiny_mean_model)
    twin = copy.deepcopy(model)
    torch.manual_seed(0)
    plain_value, plain_grads = _loss_and_grads(model, _make_loss(kind, model), columns)

    tap = ContrastiveTap(strict=True)
    wrapped = monitored(_make_loss(kind, twin), tap=tap)
    torch.manual_seed(0)
    value, grads = _loss_and_grads(twin, wrapped, columns)

    assert torch.equal(value, plain_value)
    assert len(grads) == len(plain_grads) and all(torch.equal(a, b) for a, b in zip(grads, plain_grads))

    reading = tap.drain()
    stats = finalize(reading.sums)
    with torch.no_grad():
        q = _embeddings(twin, TEXTS)
        cands = torch.cat([_embeddings(twin, c) for c in columns[1:]])
    ref = _reference_stats(q, cands, len(columns) - 1)
    for key, expected in ref.items():
        assert stats[key] == pytest.approx(expected, abs=1e-5), key
    assert stats["gap"] == pytest.approx(ref["pos_sim"] - ref["neg_sim"], abs=1e-5)
    assert ("hard_neg_sim" in stats) == with_negatives
    assert reading.loss_count == 1 and reading.loss_sum.item() == pytest.approx(value.item())


def test_triplet_loss_wrapper(tiny_mean_model):
    model = _load(tiny_mean_model)
    twin = copy.deepcopy(model)
    columns = [TEXTS, POSITIVES, NEGATIVES]
    plain_value, plain_grads = _loss_and_grads(model, losses.TripletLoss(model), columns)
    tap = ContrastiveTap(strict=True)
    value, grads = _loss_and_grads(twin, monitored(losses.TripletLoss(twin), tap=tap), columns)
    assert torch.equal(value, plain_value) and all(torch.equal(a, b) for a, b in zip(grads, plain_grads))
    stats = finalize(tap.drain().sums)
    with torch.no_grad():
        a, p, n = (_embeddings(twin, c) for c in columns)
    dp, dn = (a - p).norm(dim=1), (a - n).norm(dim=1)
    assert stats["pos_sim"] == pytest.approx(-dp.mean().item(), abs=1e-5)
    assert stats["neg_sim"] == pytest.approx(-dn.mean().item(), abs=1e-5)
    assert stats["gap"] == pytest.approx((dn - dp).mean().item(), abs=1e-5)
    assert stats["in_batch_acc"] == pytest.approx((dp < dn).float().mean().item())


def _make_gist(kind, model, guide, **options):
    if kind == "gist":
        return losses.GISTEmbedLoss(model, guide, **options)
    if kind == "cached_gist":
        return losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=3, **options)
    if kind == "matryoshka_gist":
        return losses.MatryoshkaLoss(model, losses.GISTEmbedLoss(model, guide, **options), matryoshka_dims=[32, 16])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["gist", "cached_gist", "matryoshka_gist"])
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("contrast", [True, False])
def test_gist_family_reads_anchor_positive_and_negative_matrices(
    tiny_mean_model, tiny_cls_model, kind, with_negatives, contrast
):
    """The guide's matrices, anchor-anchor and positive-positive go through the same similarity: none is read."""
    columns = [TEXTS, POSITIVES] + ([NEGATIVES] if with_negatives else [])
    options = {"contrast_anchors": contrast, "contrast_positives": contrast, "margin": 0.05}
    model, guide = _load(tiny_mean_model), _load(tiny_cls_model)
    twin = copy.deepcopy(model)
    torch.manual_seed(0)
    plain_value, plain_grads = _loss_and_grads(model, _make_gist(kind, model, guide, **options), columns)
    tap = ContrastiveTap(strict=True)
    torch.manual_seed(0)
    value, grads = _loss_and_grads(twin, monitored(_make_gist(kind, twin, guide, **options), tap=tap), columns)
    assert torch.equal(value, plain_value)
    assert len(grads) == len(plain_grads) and all(torch.equal(a, b) for a, b in zip(grads, plain_grads))

    reading = tap.drain()
    stats = finalize(reading.sums)
    with torch.no_grad():  # before the guide's masking: the plain cosine matrix of anchors x candidates
        ref = _reference_stats(
            _embeddings(twin, TEXTS), torch.cat([_embeddings(twin, c) for c in columns[1:]]), len(columns) - 1
        )
    for key, expected in ref.items():
        assert stats[key] == pytest.approx(expected, abs=1e-5), key
    assert ("hard_neg_sim" in stats) == with_negatives
    assert reading.sums.values[STAT_FIELDS.index("rows")].item() == len(
        TEXTS
    )  # every anchor row once, whatever the mini-batches
    assert reading.loss_count == 1 and reading.loss_sum.item() == pytest.approx(value.item())


def test_eval_mode_losses_are_not_recorded(tiny_mean_model):
    model = _load(tiny_mean_model)
    tap = ContrastiveTap(strict=True)
    loss = monitored(losses.MultipleNegativesRankingLoss(model), tap=tap)
    model.eval()
    with torch.no_grad():
        loss(_features(model, [TEXTS, POSITIVES]), torch.tensor([]))
    assert tap.drain().sums is None


def test_functional_info_nce_matches_sentence_transformers_and_reports():
    torch.manual_seed(1)
    q, d, n = torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 16)
    tap = ContrastiveTap(strict=True)
    ours = info_nce(q, d, n, scale=20.0, tap=tap)
    expected = losses.MultipleNegativesRankingLoss(model=None, scale=20.0).compute_loss_from_embeddings([q, d, n], None)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    stats = finalize(tap.drain().sums)
    reference = _reference_stats(q, torch.cat([d, n]), 2)
    assert {k: stats[k] for k in reference} == pytest.approx(reference, abs=1e-5)


def test_nt_xent_closed_form_on_identical_views():
    z = torch.eye(4)  # orthogonal views: positive cos 1, negatives 0
    tap = ContrastiveTap(strict=True)
    loss = nt_xent(z, z, temperature=1.0, tap=tap)
    # each row: positive logit 1, six negatives logit 0 -> -log(e / (e + 6))
    expected = -math.log(math.e / (math.e + 6))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    stats = finalize(tap.drain().sums)
    assert stats["pos_sim"] == pytest.approx(1.0) and stats["neg_sim"] == pytest.approx(0.0, abs=1e-7)
    assert stats["in_batch_acc"] == 1.0


def test_triplet_function_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    n = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    tap = ContrastiveTap(strict=True)
    loss = triplet(a, p, n, margin=0.5, distance="cosine", tap=tap)
    # row 0: dp 0, dn 1 -> 0 ; row 1: dp 1, dn 0 -> 1.5
    assert loss.item() == pytest.approx(0.75)
    stats = finalize(tap.drain().sums)
    assert stats["pos_sim"] == pytest.approx(0.5) and stats["in_batch_acc"] == 0.5


def test_report_failure_warns_once_and_switches_off():
    tap = ContrastiveTap()
    with pytest.warns(RuntimeWarning, match="switched off"):
        report_similarity(torch.zeros(3), tap=tap)  # not a matrix
    assert not tap.enabled
    report_similarity(torch.eye(3), tap=tap)  # ignored, no second warning, no exception
    assert tap.drain().sums is None
    with pytest.raises(ValueError):
        report_similarity(torch.zeros(3), tap=ContrastiveTap(strict=True))


class _CountOps(TorchDispatchMode):
    """Records every aten operation run inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_report_keeps_a_copy_and_reduces_it_at_drain():
    torch.manual_seed(0)
    scores = torch.randn(6, 12)  # in-batch block + one block of labelled hard negatives
    expected = finalize(similarity_sums(scores.clone(), block_size=6, scale=2.0))
    tap = ContrastiveTap(strict=True)
    with _CountOps() as during_report:
        report_similarity(scores, block_size=6, scale=2.0, tap=tap)
    # the loss call pays for one copy (and a detach, a view: no kernel); the reduction runs at drain()
    assert [str(op) for op in during_report.ops] == ["aten.detach.default", "aten._to_copy.default"]
    scores.fill_(float("-inf"))  # the loss masks its matrix in place afterwards, as GISTEmbed does
    with _CountOps() as during_drain:
        stats = finalize(tap.drain().sums)
    assert len(during_drain.ops) > 10
    assert stats == pytest.approx(expected, abs=1e-6) and "hard_neg_sim" in stats


def test_deferred_copies_are_reduced_early_past_the_bound():
    torch.manual_seed(0)
    matrices = [torch.randn(4, 8) for _ in range(5)]
    unbounded, bounded = ContrastiveTap(strict=True), ContrastiveTap(strict=True)
    bounded.max_deferred_elements = 70  # two 4x8 copies fit; a third reduces what is held
    held = []
    for m in matrices:
        report_similarity(m, block_size=4, tap=unbounded)
        report_similarity(m, block_size=4, tap=bounded)
        held.append(bounded._deferred_elements)
    assert held == [32, 64, 0, 32, 64]
    # the rows of all reports stacked: sums and counts add up across reports
    reference = finalize(similarity_sums(torch.cat(matrices), torch.arange(4).repeat(5), block_size=4))
    assert finalize(bounded.drain().sums) == pytest.approx(reference, abs=1e-6)
    assert finalize(unbounded.drain().sums) == pytest.approx(reference, abs=1e-6)


def test_triplet_report_with_mismatched_distances_fails_in_the_loss_call():
    with pytest.raises(ValueError, match="differ in shape"):
        report_triplet(torch.ones(3), torch.ones(4), tap=ContrastiveTap(strict=True))
