"""`aquin-monitor sae eval`'s research numbers on a tiny model: k-sparse probing, seed stability, the PCA baseline,
the held-out figures and the out-of-domain warning, each checked against a direct computation; bad probe files and
second SAEs exit 2 with one line before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_errors import one_line_error

from aquin_monitor import cli, encoders
from aquin_monitor.sae.model import SparseAutoencoder

TOPICS = {"animals": ["cat", "dog", "horse"], "money": ["bank", "card", "loan"], "sport": ["game", "team", "goal"]}
FILLER = ["the", "a", "is", "on", "big", "old"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def labelled(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(180):
        label = list(TOPICS)[i % 3]
        words = list(rng.choice(TOPICS[label], size=2)) + list(rng.choice(FILLER, size=3))
        rows.append({"text": " ".join(rng.permutation(words)), "label": label})
    rows.append({"text": "$$ <script>alert(1)</script> cat", "label": "animals"})
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


@pytest.fixture
def sae_folder(tmp_path, tiny_mean_model):
    sae = SparseAutoencoder(32, 48, 4, seed=0, metadata={"model": tiny_mean_model})
    folder = sae.save(tmp_path / "sae")
    recorded = {"sae/fvu": 0.01, "sae/cosine": 0.99, "sae/retrieval/kept_ndcg@10": 0.9, "sae/stability/second_sae": 0.3}
    report = {"metrics": recorded, "config": {}}
    (folder / "quality.json").write_text(json.dumps(report))
    shuffled = SparseAutoencoder(32, 48, 4, seed=0, metadata={"model": tiny_mean_model})
    order = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shuffled.W_dec.copy_(sae.W_dec[order])
    return folder, shuffled.save(tmp_path / "shuffled")


def test_eval_reports_every_research_number(tiny_mean_model, labelled, sae_folder, tmp_path, capsys):
    from sklearn.decomposition import PCA

    from aquin_monitor.sae.model import load_sae
    from aquin_monitor.sae.probe_data import labelled_file_splits
    from aquin_monitor.sae.quality import k_sparse_probing

    path, rows = labelled
    folder, shuffled = sae_folder
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"the {w}", "document": f"a {w} on the {w}"}) + "\n" for w in FILLER))
    args = ["sae", "eval", str(folder), "--corpus", str(path), "--probe", str(path), "--pairs", str(pairs)]
    code = cli.main(
        args + ["--second-sae", str(shuffled), "--seeds", "2", "--seed-epochs", "3", "--json", "-", "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    metrics = result["metrics"]

    model = encoders.load_model(tiny_mean_model, device="cpu")
    sae = load_sae(folder)
    splits = labelled_file_splits(path)
    direct = k_sparse_probing(
        sae,
        encoders.encode(model, splits.train_texts),
        splits.train_labels,
        encoders.encode(model, splits.test_texts),
        splits.test_labels,
    )
    for name in ("sae@1", "sae@5", "sae@20", "embedding", "reconstruction", "n_tasks"):
        assert metrics[f"sae/probe/topics/{name}"] == pytest.approx(direct[name]), name
    assert metrics["sae/probe/topics/n_tasks"] == 3

    x = encoders.encode(model, [r["text"] for r in rows]).astype(np.float64)
    pca = PCA(n_components=4).fit(x)
    residual = x - pca.inverse_transform(pca.transform(x))
    assert metrics["sae/pca/fvu"] == pytest.approx((residual**2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-3)
    assert metrics["sae/pca/n_components"] == 4
    for key in (
        "sae/pca/retrieval/reconstructed/ndcg@10",
        "sae/pca/retrieval/kept_ndcg@10",
        "sae/retrieval/kept_ndcg@10",
    ):
        assert 0 <= metrics[key] <= 1.5, key
    assert "sae/pca/retrieval/original/ndcg@10" not in metrics  # the same as sae/retrieval/original/ndcg@10

    assert metrics["sae/held_out/fvu"] == 0.01 and metrics["sae/held_out/retrieval/kept_ndcg@10"] == 0.9
    assert metrics["sae/held_out/stability/second_sae"] == 0.3  # as recorded in quality.json
    assert metrics["sae/stability/second_sae"] == 1.0  # the same decoder rows, shuffled
    assert 0 <= metrics["sae/stability/seeds"] <= 1
    # an untrained SAE reconstructs far worse than the 0.01 its quality.json claims: one warning line, also in JSON
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "topics.jsonl reconstructs much worse" in warning[0]
    assert result["warnings"] == warning and result["probes"] == {"topics": str(path)}
    from aquin_monitor.metric_registry import find_metric

    assert [name for name in metrics if find_metric(name) is None] == []  # each defined in docs/metrics.md


def test_no_warning_without_a_held_out_report(tiny_mean_model, labelled, tmp_path, capsys):
    path, _ = labelled
    folder = SparseAutoencoder(32, 48, 4, metadata={"model": tiny_mean_model}).save(tmp_path / "bare")
    args = ["sae", "eval", str(folder), "--corpus", str(path), "--no-probe", "--no-retrieval", "--json", "-"]
    assert cli.main(args + ["--no-progress"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["warnings"] == [] and "warning" not in captured.err
    assert not any(k.startswith(("sae/held_out/", "sae/probe/", "sae/stability/")) for k in result["metrics"])


@pytest.mark.parametrize(
    ("content", "parts"),
    [
        ('{"text": "a cat"}\n{"text": "a dog"}\n', [":1:", "'label'", "missing"]),
        ('{"text": "a cat", "label": "x"}\n{"text": "a dog"}\n', [":2:", "label"]),
        ('{"text": "a cat", "label": "x"}\n{"text": "a dog", "label": "x"}\n' * 3, [":1:", "2 labels"]),
        ('{"text": "a cat", "label": ["x"]}\n', [":1:", "label"]),
    ],
)
def test_bad_probe_file_is_named_before_the_model_loads(
    tiny_mean_model, labelled, sae_folder, tmp_path, capsys, no_model_loading, content, parts
):
    path, _ = labelled
    bad = tmp_path / "bad$$.jsonl"
    bad.write_text(content)
    assert cli.main(["sae", "eval", str(sae_folder[0]), "--corpus", str(path), "--probe", str(bad)]) == 2
    one_line_error(capsys, str(bad), *parts)


def test_second_sae_of_another_space_is_refused_before_the_model_loads(
    tiny_mean_model, labelled, sae_folder, tmp_path, capsys, no_model_loading
):
    path, _ = labelled
    other = SparseAutoencoder(16, 48, 4).save(tmp_path / "other")
    args = ["sae", "eval", str(sae_folder[0]), "--corpus", str(path), "--no-probe", "--second-sae", str(other)]
    assert cli.main(args) == 2
    one_line_error(capsys, "--second-sae", "16-dimensional")
    assert cli.main(["sae", "eval", str(sae_folder[0]), "--corpus", str(path), "--second-sae", str(tmp_path)]) == 2
    one_line_error(capsys, "cfg.json")


def test_two_probe_files_of_one_name_are_refused(tiny_mean_model, labelled, sae_folder, tmp_path, capsys):
    path, _ = labelled
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "topics.jsonl"
    twin.write_text(path.read_text())
    args = ["sae", "eval", str(sae_folder[0]), "--corpus", str(path), "--probe", str(path), "--probe", str(twin)]
    assert cli.main(args) == 2
    one_line_error(capsys, "--probe", "share a name")


def test_page_shows_the_same_fit_as_sae_eval(tiny_mean_model, labelled, sae_folder, tmp_path, capsys):
    """The SAE page's "fit on this corpus" numbers are sae eval's (one computation), with the warning line."""
    path, _ = labelled
    folder, _ = sae_folder
    base = ["--corpus", str(path), "--no-progress"]
    assert cli.main(["sae", "eval", str(folder), *base, "--no-probe", "--no-retrieval", "--json", "-"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["metrics"]
    page = tmp_path / "page.html"
    assert (
        cli.main(["sae", "browse", str(folder), *base, "--html", str(page), "--json", "-", "--min-support", "2"]) == 0
    )
    captured = capsys.readouterr()
    fit = json.loads(captured.out)["fit"]
    for name in ("sae/fvu", "sae/cosine", "sae/pca/fvu", "sae/pca/cosine", "sae/held_out/fvu"):
        assert fit["metrics"][name] == pytest.approx(evaluated[name], rel=1e-6), name
    assert fit["warning"].startswith("warning: topics.jsonl") and fit["warning"] in captured.err
    html = page.read_text()
    assert 'id="fit-table"' in html and "reconstructs much worse" in html
