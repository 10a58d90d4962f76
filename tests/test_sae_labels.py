"""Label quality scores, key-phrase labels and the chance-controlled absorption/polysemy diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from sae_planted import planted_corpus
from scipy.stats import false_discovery_control, hypergeom
from sklearn.metrics import roc_auc_score

from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import browse_features
from aquin_monitor.sae.diagnose import absorption_pairs, benjamini_hochberg, diagnose, pairs_tested
from aquin_monitor.sae.keyphrases import (
    best_separating_set,
    candidate_phrases,
    keyphrase_labels,
    maximal_marginal_relevance,
    template_frame,
)
from aquin_monitor.sae.label_quality import mean_pairwise_cosine, rank_auc, score_labels, summarise, term_support

WORDS = ["guitar", "man", "playing", "dog", "beach", "red", "car", "cat", "sits", "sun", "piano", "woman"]


def bag_encoder(phrases):
    """One axis per known word (a phrase is the sum of its words' axes), plus a small shared offset."""
    out = np.full((len(phrases), len(WORDS)), 0.05)
    for i, phrase in enumerate(phrases):
        for word in phrase.lower().replace(".", "").replace(",", "").split():
            if word in WORDS:
                out[i, WORDS.index(word)] += 1.0
    return out


def test_term_support_counts_whole_word_runs_by_hand():
    texts = ["A man plays guitar.", "The mango is ripe", "man, guitar", "Two men"]
    # "man": texts 0 and 2 (not "mango", not "men"); any of man / guitar: texts 0, 2
    assert term_support(["man", "guitar"], texts) == (0.5, 0.5)
    assert term_support(["plays guitar"], texts) == (0.25, 0.25)
    assert term_support(["ripe, men"], texts) == (0.25, 0.5)  # comma-joined terms split
    assert term_support([], texts) == (0.0, 0.0)


def test_mean_pairwise_cosine_equals_brute_force():
    x = np.random.default_rng(0).normal(size=(9, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert mean_pairwise_cosine(x) == pytest.approx(cos[~np.eye(9, dtype=bool)].mean(), abs=1e-12)


def test_label_auc_and_cohesion_against_scikit_learn_and_numpy():
    texts = ["man playing guitar"] * 3 + ["dog on beach", "red car", "cat sits", "sun", "woman", "piano"] * 5
    x = bag_encoder(texts)
    random_rows = np.arange(3, len(texts))
    labels = {0: ["guitar"], 1: ["beach"]}
    top = {0: [0, 1, 2], 1: [0, 1, 2]}
    good, bad = score_labels(labels, top, x, texts, encode=bag_encoder, random_rows=random_rows)
    label = bag_encoder(["guitar"])[0]
    cos = x @ label / (np.linalg.norm(x, axis=1) * np.linalg.norm(label))
    truth = np.r_[np.ones(3), np.zeros(len(random_rows))]
    assert good.auc == pytest.approx(roc_auc_score(truth, np.r_[cos[:3], cos[random_rows]])) == 1.0
    beach = bag_encoder(["beach"])[0]
    cos_beach = x @ beach / (np.linalg.norm(x, axis=1) * np.linalg.norm(beach))
    assert bad.auc == pytest.approx(roc_auc_score(truth, np.r_[cos_beach[:3], cos_beach[random_rows]]))
    assert bad.auc < good.auc
    assert good.support_first == 1.0 and bad.support_first == 0.0
    expected = mean_pairwise_cosine(x[:3]) - mean_pairwise_cosine(x[random_rows])
    assert good.cohesion == pytest.approx(expected) and good.cohesion > 0
    summary = summarise([good, bad])
    assert summary["share_first_term_in_half"] == 0.5 and summary["auc_median"] == pytest.approx(
        (good.auc + bad.auc) / 2, abs=1e-4
    )
    # without an encoder: no AUC, the rest is the same
    (plain, _) = score_labels(labels, top, x, texts, random_rows=random_rows)
    assert plain.auc is None and plain.support_first == 1.0 and summarise([plain])["auc_median"] is None


def test_template_frame_needs_a_shared_head_with_a_content_word():
    frame = ["A man is thinking.", "A man is sitting", "a man is idling", "A man is dancing", "Dogs run"]
    assert template_frame(frame) == "a man is …"  # 4 of 5 texts
    assert template_frame(frame, min_share=0.9) is None
    assert template_frame(["It is a cat", "It is a dog", "It is a hen"]) is None  # stop words only
    assert template_frame(["a man", "a man"]) is None  # the frame is the whole text
    assert template_frame(["a man is", "a man is"]) == "a man …"


def test_candidates_hold_the_share_they_claim():
    texts = ["a man playing guitar", "the man is playing guitar", "man playing piano", "a woman sings"]
    found = candidate_phrases(texts, [[0, 1, 2, 3]], min_share=0.5)[0]
    for phrase, share in found.items():
        assert share == term_support([phrase], texts)[0] >= 0.5
    assert {"man", "playing", "guitar", "man playing", "playing guitar"} <= set(found)
    assert "man playing guitar" not in found  # in text 0 only: "the man is playing guitar" breaks the run
    assert not any(p.split()[0] in {"a", "the", "is"} or p.split()[-1] in {"a", "the", "is"} for p in found)


def test_mmr_against_its_formula_by_brute_force():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(7, 4))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    relevance, similarity = rng.uniform(size=7), v @ v.T
    chosen = maximal_marginal_relevance(relevance, similarity, 4, diversity=0.4)
    expect = [int(np.argmax(relevance))]
    while len(expect) < 4:
        rest = [i for i in range(7) if i not in expect]
        score = [0.6 * relevance[i] - 0.4 * max(similarity[i, j] for j in expect) for i in rest]
        expect.append(rest[int(np.argmax(score))])
    assert chosen == expect
    assert maximal_marginal_relevance(relevance, similarity, 3, diversity=0.0) == list(np.argsort(-relevance)[:3])


def test_keyphrase_label_is_the_shared_phrase_not_a_word_of_one_text():
    # six of ten top texts share "playing guitar"; every text also has a word of its own
    own = ["beach", "red", "car", "cat", "sun", "piano", "dog", "woman", "sits", "man"]
    top = [f"{w} playing guitar" if i < 6 else f"{w} alone" for i, w in enumerate(own)]
    background = [f"{a} {b}" for a in own for b in own if a != b]
    texts = top + background
    x = bag_encoder(texts)
    [label] = keyphrase_labels(texts, [list(range(10))], x, bag_encoder, top_terms=2)
    assert label[0] in {"playing guitar", "guitar", "playing"}
    assert all(term_support([t], top)[0] >= 0.3 for t in label)
    [framed] = keyphrase_labels(
        ["A man is thinking.", "A man is sitting", "A man is dancing", "dogs"],
        [[0, 1, 2]],
        bag_encoder(["man sits", "man", "man", "dog"]),
        bag_encoder,
    )
    assert framed[0] == "a man is …" and "man" not in framed[1:]


def test_rank_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 5, size=(6, 7)) / 4, rng.integers(0, 5, size=(6, 30)) / 4  # many ties
    expect = [roc_auc_score(np.r_[np.ones(7), np.zeros(30)], np.r_[p, n]) for p, n in zip(pos, neg)]
    assert rank_auc(pos, neg) == pytest.approx(expect, abs=1e-12)


def guitar_case():
    """Ten top texts all say "man" (as do 30 of 75 random texts) and six say "guitar" (no random text does)."""
    others = ["beach", "red", "car", "cat", "sun", "piano", "dog", "sits", "woman", "playing"]
    top = [f"man {w} guitar" for w in others[:6]] + [f"man {w}" for w in others[6:]]
    background = [f"man {a}" for a in others] * 3 + [f"{a} {b}" for a in others for b in others if a < b]
    texts = top + background
    return texts, top, bag_encoder(texts), np.arange(len(top), len(texts))


def sklearn_auc(direction, x, positives, negatives):
    unit = direction / np.linalg.norm(direction)
    cos = x @ unit / np.linalg.norm(x, axis=1)
    return roc_auc_score(
        np.r_[np.ones(len(positives)), np.zeros(len(negatives))], np.r_[cos[positives], cos[negatives]]
    )


def test_the_label_is_the_supported_set_that_separates_best_by_brute_force():
    texts, top, x, negatives = guitar_case()
    positives = np.arange(10)
    man, guitar = bag_encoder(["man"])[0], bag_encoder(["guitar"])[0]
    # by hand: "man" is in every top text but also in most random ones; "guitar" in 6 of 10 and no random text
    assert sklearn_auc(guitar, x, positives, negatives) > sklearn_auc(man, x, positives, negatives)

    def label(**kwargs):
        return keyphrase_labels(texts, [list(positives)], x, bag_encoder, negative_rows=negatives, **kwargs)[0]

    # one term: "guitar" covers 6 of 10 texts, "man" 10: with a cover slack of 0.5 the better separator wins ...
    assert label(top_terms=1, coverage_slack=0.5) == ["guitar"]
    # ... with the default slack (0.1: one text of ten) the label must cover as many texts as "man" does
    assert label(top_terms=1) == ["man"]
    # two terms: every allowed set (cover >= 1.0 - 0.1, a term of the majority tier), scored by scikit-learn on
    # the normalised sum of its unit embeddings; the most shared term first
    candidates = candidate_phrases(texts, [list(positives)], min_share=0.2)[0]
    assert set(candidates) == {"man", "guitar"}  # no other run of words is in 2 top texts
    unit = {t: v / np.linalg.norm(v) for t, v in zip(candidates, bag_encoder(list(candidates)))}
    allowed = [("man",), ("man", "guitar")]  # ("guitar",) covers 0.6 < 0.9
    scores = {s: sklearn_auc(sum(unit[t] for t in s), x, positives, negatives) for s in allowed}
    assert scores[("man", "guitar")] > scores[("man",)]
    assert label(top_terms=2) == ["man", "guitar"]
    # min_terms above what a set can hold falls back to the largest sets that can be formed
    assert label(top_terms=1, min_terms=3, coverage_slack=0.5) == ["guitar"]


def test_the_label_keeps_a_term_of_the_strongest_support_tier():
    # "sun" is in 3 of 10 top texts and no random text (it separates best); "dog" is in 6 of them and in
    # random texts too: a label of one term must name what half the texts share, not the rarer sharper word
    own = ["beach", "red", "car", "cat", "sits", "piano", "woman", "playing", "man", "guitar"]
    top = [f"dog {w}" for w in own[:6]] + [f"sun {w}" for w in own[6:9]] + ["car red"]
    background = [f"dog {a}" for a in own] * 6 + [f"{a} {b}" for a in own for b in own if a != b]
    texts = top + background
    x, negatives = bag_encoder(texts), np.arange(10, len(texts))
    label = keyphrase_labels(
        texts, [list(range(10))], x, bag_encoder, negative_rows=negatives, top_terms=1, coverage_slack=1.0
    )
    assert label == [["dog"]]
    # with no tier rule (tiers the candidates cannot reach), the sharper word wins
    sun, dog = bag_encoder(["sun"])[0], bag_encoder(["dog"])[0]
    assert sklearn_auc(sun, x, np.arange(10), negatives) > sklearn_auc(dog, x, np.arange(10), negatives)
    vectors = bag_encoder(["dog", "sun"])
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    free = best_separating_set(
        {"dog": 0.6, "sun": 0.3},
        vectors,
        unit_x[:10],
        unit_x[negatives],
        top,
        top_terms=1,
        tiers=(2.0,),
        coverage_slack=1.0,
    )
    assert free == ["sun"]


@pytest.mark.parametrize(
    "classes",
    [[[0, 1, 2, 3]], [[4]], [[]], [[5, 6]], [[0, 1], [4], [], [5, 6, 7]]],
    ids=["hostile", "one-text", "empty-class", "empty-texts", "all-at-once"],
)
def test_hostile_texts_give_word_labels_or_none_and_one_encoder_call(classes):
    texts = [
        "$$ <script>alert(1)</script> guitar",
        "<script> guitar $$",
        "guitar $$ man",
        "man $$",
        "A man is playing guitar",
        "",
        "   ",
        "$$",
    ]
    texts += [f"{a} {b}" for a in WORDS for b in WORDS if a != b]
    calls = []

    def encode(phrases):
        calls.append(list(phrases))
        return bag_encoder(phrases)

    labels = keyphrase_labels(texts, classes, bag_encoder(texts), encode)
    assert len(labels) == len(classes) and len(calls) <= 1
    for label, members in zip(labels, classes):
        for term in label:
            assert term and "<" not in term and "$" not in term and ">" not in term
            assert term.endswith("…") or term_support([term], [texts[i] for i in members])[0] * len(members) >= 2
    if classes == [[0, 1, 2, 3]]:  # "guitar" and "man" are the words those texts share; "script" is in 2 of 4
        assert labels[0][0] in {"guitar", "man"}
    if classes == [[4]]:  # one text: its head is all a label can say (no phrase is in 2 texts)
        assert labels == [["a man is playing …"]]
    if classes in ([[]], [[5, 6]]):
        assert labels == [[]]  # no text, or no word: no label


def test_browser_scores_its_labels_and_uses_key_phrases_with_an_encoder():
    sae, x, texts = planted_corpus(640)
    plain = browse_features(sae, x, texts)
    assert plain.labeller == "c-TF-IDF" and plain.label_summary is not None
    first = plain.features[0]
    assert first.label_score is not None and first.label_score.auc is None
    label_texts = [e.text for e in first.examples[:10]]
    assert first.label_score.support_first == term_support(first.label, label_texts)[0]

    def encode(phrases):  # any fixed map of phrases: the browser must call it once, with every candidate
        calls.append(list(phrases))
        return np.random.default_rng(len(phrases)).normal(size=(len(phrases), x.shape[1]))

    calls: list[list[str]] = []
    keyed = browse_features(sae, x, texts, encode=encode)
    assert keyed.labeller == "key phrases" and len(calls) == 2  # candidates once, label phrases once
    for f in keyed.features:
        # planted texts read "text <i> topic <t> side <s>": every top text of a topic feature is "topic t"
        assert f.label_score.auc is not None
        assert all(term_support([t], [e.text for e in f.examples[:10]])[0] >= 0.3 for t in f.label if "…" not in t)


def test_benjamini_hochberg_equals_scipy_with_untested_pairs_as_ones():
    p = np.random.default_rng(2).uniform(size=40) ** 3
    assert benjamini_hochberg(p) == pytest.approx(false_discovery_control(p))
    padded = false_discovery_control(np.r_[p, np.ones(60)])[:40]
    assert benjamini_hochberg(p, tests=100) == pytest.approx(padded)


def test_absorption_by_base_rate_is_listed_but_not_flagged():
    """Hand-built activations: feature 0 fires on 19 of 20 texts (dense), 1 on texts 0–9, 2 on texts 0–11,
    3 on texts 0–3 and 12-15. 1 → 0 passes P(B | A) ≥ 0.9 by 0's base rate alone; 1 → 2 is a real implication."""
    n = 20
    z = np.zeros((n, 4))
    z[:19, 0] = 1
    z[:10, 1] = 1
    z[:12, 2] = 1
    z[[0, 1, 2, 3, 12, 13, 14, 15], 3] = 1
    pairs = absorption_pairs(scipy.sparse.csr_matrix(z), [f"t{i}" for i in range(n)], min_support=5, alpha=0.05)
    found = {(p.source, p.target): p for p in pairs}
    assert set(found) == {(1, 0), (1, 2), (2, 0), (3, 0)}
    real, dense = found[(1, 2)], found[(1, 0)]
    assert (real.probability, real.target_frequency, real.lift) == (1.0, 0.6, pytest.approx(1 / 0.6))
    assert real.p_value == pytest.approx(hypergeom.sf(9, 20, 12, 10))  # P(X ≥ 10): 10 draws, 12 of 20 are B's
    assert dense.lift == pytest.approx(1 / 0.95) and not dense.flagged
    m = pairs_tested(z.sum(0), 5)
    assert m == 4 * 3
    # q: BH over all 12 ordered pairs tested, computed here from every pair's hypergeometric p
    c = z.T @ z
    every = [hypergeom.sf(c[a, b] - 1, n, c[b, b], c[a, a]) for a in range(4) for b in range(4) if a != b]
    q = dict(zip([(a, b) for a in range(4) for b in range(4) if a != b], false_discovery_control(every)))
    for key, pair in found.items():
        assert pair.q_value == pytest.approx(q[key])
    # lift 1.67 < 2: by default not flagged; a lower bar flags it once q allows
    assert not real.flagged
    again = {
        (p.source, p.target): p
        for p in absorption_pairs(scipy.sparse.csr_matrix(z), ["t"] * n, min_support=5, min_lift=1.5, alpha=0.5)
    }
    assert again[(1, 2)].flagged == (q[(1, 2)] <= 0.5) and not again[(1, 0)].flagged
    assert [p.flagged for p in pairs] == sorted([p.flagged for p in pairs], reverse=True)


def test_planted_absorption_is_flagged_with_its_lift():
    sae, x, texts = planted_corpus()
    z = sparse_activations(sae, x)
    [pair] = absorption_pairs(z, texts)
    dense = z.toarray() > 0
    assert pair.target_frequency == pytest.approx(dense[:, 5].mean())
    assert pair.lift == pytest.approx(1.0 / dense[:, 5].mean()) and pair.lift > 10
    assert pair.flagged and pair.q_value < 1e-6


def test_polysemy_null_flags_the_planted_feature_only():
    sae, x, texts = planted_corpus()
    z = sparse_activations(sae, x)
    found = diagnose(z, x, texts, top=20)
    by = {p.feature: p for p in found.polysemy}
    assert by[9].merged and by[9].silhouette_p <= 0.05
    # one-concept features are tighter than random texts of 32 orthogonal topics; the two-concept one less so
    assert max(found.polysemy, key=lambda p: p.spread_z).feature == 9
    # z and p against the null recomputed here: random sets of 20 of the same 500 random rows
    from aquin_monitor.sae.diagnose import random_set_null

    pool_rows = np.random.default_rng(0).choice(len(x), size=500, replace=False)
    pool = x[pool_rows] / np.linalg.norm(x[pool_rows], axis=1, keepdims=True)
    spreads, silhouettes = random_set_null(pool, 20, draws=100, seed=7919 * 20)
    assert by[9].spread_z == pytest.approx((by[9].spread - spreads.mean()) / spreads.std(), rel=1e-6)
    assert by[9].silhouette_p == pytest.approx((1 + (silhouettes >= by[9].silhouette - 1e-12).sum()) / 101)
    assert [p.feature for p in found.polysemy if p.merged] == [9]
    assert found.pairs_tested == pairs_tested(np.asarray((z > 0).sum(0), dtype=float).ravel(), 10)
    # with the null switched to "any split passes" (alpha = 1), only the silhouette bar remains
    loose = diagnose(z, x, texts, top=20, alpha=1.0)
    assert {p.feature for p in loose.polysemy if p.merged} >= {9}


def test_independent_features_give_no_flag_however_many_pairs_pass_the_bar():
    """Null: 30 independent features firing on 2–97 % of 2,000 texts. Many pairs reach P(B | A) ≥ 0.9 through a
    dense B; none is flagged (BH controls the chance of any false flag at alpha under this complete null)."""
    rng = np.random.default_rng(4)
    rates = np.linspace(0.02, 0.97, 30)
    z = (rng.uniform(size=(2000, 30)) < rates).astype(np.float32)
    pairs = absorption_pairs(scipy.sparse.csr_matrix(z), ["t"] * 2000)
    assert len(pairs) > 50
    assert not any(p.flagged for p in pairs)
    assert max(p.lift for p in pairs) < 1.2
    # one planted implication: 3 now fires only where 10 does (3 on ~4 % of texts, 10 on ~35 %: lift ~2.9)
    z[:, 3] = z[:, 3] * z[:, 10]
    flagged = [(p.source, p.target) for p in absorption_pairs(scipy.sparse.csr_matrix(z), ["t"] * 2000) if p.flagged]
    assert (3, 10) in flagged and len(flagged) == 1


def test_p_value_bounds_only_raise_q():
    """Over many co-firing pairs the unlisted pairs' p-values are Chernoff–Hoeffding bounds: each bound is at least
    scipy's exact tail, and the listed pairs' q can only grow (BH is monotone in the other p-values)."""
    rng = np.random.default_rng(6)
    z = (rng.uniform(size=(400, 25)) < np.linspace(0.03, 0.9, 25)).astype(np.float32)
    z[:, 2] = z[:, 2] * z[:, 20]
    matrix = scipy.sparse.csr_matrix(z)
    exact = {(p.source, p.target): p for p in absorption_pairs(matrix, ["t"] * 400, min_support=5)}
    bounded = {(p.source, p.target): p for p in absorption_pairs(matrix, ["t"] * 400, min_support=5, exact_limit=0)}
    assert exact.keys() == bounded.keys() and (2, 20) in exact
    for key, pair in exact.items():
        assert bounded[key].p_value == pytest.approx(pair.p_value)  # listed pairs stay exact
        assert bounded[key].q_value >= pair.q_value - 1e-12
    c = z.T @ z
    n_i = np.diag(c)
    a, b = np.nonzero(~np.eye(25, dtype=bool) & (c > 0))
    from aquin_monitor.sae.diagnose import co_firing_p_values

    tail = hypergeom.sf(c[a, b] - 1, 400, n_i[b], n_i[a])
    bound = co_firing_p_values(c[a, b], n_i[a], n_i[b], 400, exact=np.zeros(len(a), dtype=bool))
    assert (bound >= tail - 1e-12).all() and (bound < 1).any()


@pytest.mark.parametrize(
    "flags", [["--alpha", "nan"], ["--alpha", "1.5"], ["--min-lift", "0.5"], ["--min-lift", "inf"], ["--labels", "$$"]]
)
def test_bad_diagnostic_flags_exit_2_before_anything_loads(flags, tmp_path, capsys):
    from aquin_monitor import cli

    verb = "browse" if flags[0] == "--labels" else "diagnose"
    code = cli.main(["sae", verb, "default", "--corpus", str(tmp_path / "missing.jsonl"), *flags])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert flags[0] in err and len(err.splitlines()) == 1
