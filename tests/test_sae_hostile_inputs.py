"""Issue 24 (hostile inputs, second round): SAE verbs that accepted nonsense or noticed it late, terminal control
sequences in printed labels, a run folder another tool wrote into, output lost to a closed stdout.

Every bad input exits 2 with ONE line naming the flag or file, before any model loads (``load_model`` is
replaced by a function that fails the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor import cli, encoders
from aquin_monitor.sae.model import SparseAutoencoder

ROOT = Path(__file__).parents[1]
WORDS = ["cat", "dog", "bank", "card", "money", "science", "cell", "game", "team", "news", "the", "a"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": " ".join(rng.choice(WORDS, size=5)), "id": f"d{i}"}) for i in range(60)) + "\n"
    )
    return path


@pytest.fixture
def sae_folder(tiny_mean_model, tmp_path):
    folder = tmp_path / "sae"
    SparseAutoencoder(32, 64, 4, seed=0, metadata={"model": tiny_mean_model}).save(folder)
    return folder


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(encoders, "load_model", refuse)


def one_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err
    return err


def beir_folder(tmp_path: Path, scores: list[int]) -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"cat dog {w}"}) + "\n" for i, w in enumerate(WORDS))
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"a {w}"}) + "\n" for i, w in enumerate(WORDS[:3]))
    )
    rows = [f"q{i}\td{i}\t{score}" for i, score in enumerate(scores)]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


# ----------------------------------------------------------------------------------- item 4: steer --delta


@pytest.mark.parametrize("delta", ["nan", "inf", "-inf", "-nan", "1e999"])
def test_steer_non_finite_delta_is_one_line(capsys, sae_folder, corpus, no_model_loads, delta):
    assert (
        cli.main(["sae", "steer", str(sae_folder), "cat", "--feature", "1", "--delta", delta, "--corpus", str(corpus)])
        == 2
    )
    one_line(capsys, "--delta", "finite")


def test_steer_negative_exponent_delta_is_a_value_not_an_option(capsys, sae_folder, corpus):
    code = cli.main(
        [
            "sae",
            "steer",
            str(sae_folder),
            "cat dog",
            "--feature",
            "1",
            "--delta",
            "-1e-3",
            "--corpus",
            str(corpus),
            "--json",
            "-",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["delta"] == -1e-3


def test_steer_huge_delta_moves_the_query_onto_the_feature_direction(sae_folder):
    from aquin_monitor.sae.model import load_sae
    from aquin_monitor.sae.steer import steered_query

    sae = load_sae(sae_folder)
    q = np.random.default_rng(0).normal(size=32).astype(np.float32)
    moved, _, _ = steered_query(sae, q, 3, 1e308)
    direction = sae.W_dec[3].detach().double().numpy()
    # the limit of normalise(q + c·d) as c → ∞ is d / ‖d‖ (before: the norm overflowed and q' was all zeros)
    assert np.isfinite(moved).all() and np.allclose(moved, direction / np.linalg.norm(direction), atol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        steered_query(sae, np.full(32, np.nan, dtype=np.float32), 3, 1.0)


def test_steer_cli_huge_delta_scores_are_cosines_with_the_feature(capsys, sae_folder, corpus):
    code = cli.main(
        [
            "sae",
            "steer",
            str(sae_folder),
            "cat dog",
            "--feature",
            "3",
            "--delta",
            "1e308",
            "--corpus",
            str(corpus),
            "--json",
            "-",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["cosine_shift"] != 0.0 and any(hit["score"] != 0.0 for hit in result["after"])


# ------------------------------------------------------------------------------ item 5: NaN embeddings


@pytest.fixture(scope="module")
def nan_model(tiny_model_factory, tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_factory(pooling="mean"), device="cpu")
    model[0].auto_model.embeddings.word_embeddings.weight.data[:] = float("nan")
    folder = tmp_path_factory.mktemp("nan-model") / "model"
    model.save(str(folder))
    return str(folder)


def test_sae_eval_refuses_nan_embeddings_naming_the_first_row(capsys, nan_model, corpus, tmp_path):
    folder = tmp_path / "nan-sae"
    SparseAutoencoder(32, 64, 4, seed=0, metadata={"model": nan_model}).save(folder)
    out = tmp_path / "q.json"
    assert cli.main(["sae", "eval", str(folder), "--corpus", str(corpus), "--no-progress", "--json", str(out)]) == 2
    one_line(capsys, "row 0", "not finite", "cat" if "cat" in corpus.read_text().splitlines()[0] else "")
    assert not out.exists()


# ------------------------------------------------------------------------- item 6: nonsense thresholds


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["faithfulness", "{sae}", "--beir", "{beir}", "--random", "-1"], "--random"),
        (["browse", "{sae}", "--corpus", "{corpus}", "--threshold", "nan"], "--threshold"),
        (["browse", "{sae}", "--corpus", "{corpus}", "--npmi", "nan"], "--npmi"),
        (["browse", "{sae}", "--corpus", "{corpus}", "--npmi", "1.5"], "--npmi"),
        (["diagnose", "{sae}", "--corpus", "{corpus}", "--threshold", "inf"], "--threshold"),
        (["diagnose", "{sae}", "--corpus", "{corpus}", "--threshold", "-0.5"], "--threshold"),
        (["match", "{sae}", "{sae}", "--corpus", "{corpus}", "--threshold", "nan"], "--threshold"),
        (["train", "{model}", "--corpus", "{corpus}", "--out", "{out}", "--lr", "nan"], "--lr"),
        (["train", "{model}", "--corpus", "{corpus}", "--out", "{out}", "--lr", "0"], "--lr"),
    ],
)
def test_nonsense_numbers_are_refused(
    capsys, tmp_path, sae_folder, corpus, tiny_mean_model, no_model_loads, argv, flag
):
    names = {
        "sae": str(sae_folder),
        "corpus": str(corpus),
        "beir": str(beir_folder(tmp_path, [1, 1, 1])),
        "model": tiny_mean_model,
        "out": str(tmp_path / "out"),
    }
    assert cli.main(["sae", *[a.format(**names) for a in argv]]) == 2
    one_line(capsys, flag)
    assert not (tmp_path / "out").exists()


def test_faithfulness_random_zero_is_allowed_by_the_parser():
    args = cli.build_parser().parse_args(["sae", "faithfulness", "default", "--beir", "x", "--random", "0"])
    assert args.random == 0


# ------------------------------------------------------------------------- item 7: checked before the load


def test_train_k_above_num_latents_before_the_load(capsys, tmp_path, tiny_mean_model, corpus, no_model_loads):
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "sae",
                "train",
                tiny_mean_model,
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--k",
                "5000",
                "--num-latents",
                "10",
            ]
        )
        == 2
    )
    one_line(capsys, "--k", "5000", "10")
    # the default num_latents (4·d = 128 for the 32-dimensional tiny model) is known from the model's files
    assert cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(out), "--k", "129"]) == 2
    one_line(capsys, "--k", "129", "128")
    assert (
        cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(out), "--num-latents", "4"])
        == 2
    )
    one_line(capsys, "--num-latents", "8")  # default k = 8 under 5k texts
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{model}", "--probe", "{corpus}"],
        ["eval", "{model}", "--beir", "{beir}"],
        ["sae", "eval", "{sae}", "--corpus", "{corpus}"],
        ["sae", "decompose", "{sae}", "cat"],
        ["sae", "steer", "{sae}", "cat", "--feature", "1", "--delta", "1", "--corpus", "{corpus}"],
        ["sae", "browse", "{sae}", "--corpus", "{corpus}"],
        ["sae", "train", "{model}", "--corpus", "{corpus}", "--out", "{out}"],
    ],
)
@pytest.mark.parametrize("device", ["nonsense", "cuda:99", "tpu"])
def test_bad_device_before_the_load(
    capsys, tmp_path, sae_folder, corpus, tiny_mean_model, no_model_loads, argv, device
):
    names = {
        "sae": str(sae_folder),
        "corpus": str(corpus),
        "beir": str(beir_folder(tmp_path, [1, 1, 1])),
        "model": tiny_mean_model,
        "out": str(tmp_path / "out"),
    }
    assert cli.main([a.format(**names) for a in argv] + ["--device", device]) == 2
    one_line(capsys, "--device", device)


@pytest.mark.parametrize("command", ["sae-eval", "sae-faithfulness", "eval"])
def test_beir_qrels_all_zero_before_the_load(
    capsys, tmp_path, sae_folder, corpus, tiny_mean_model, no_model_loads, command
):
    beir = str(beir_folder(tmp_path, [0, 0, 0]))
    argv = {
        "sae-eval": ["sae", "eval", str(sae_folder), "--corpus", str(corpus), "--beir", beir],
        "sae-faithfulness": ["sae", "faithfulness", str(sae_folder), "--beir", beir],
        "eval": ["eval", tiny_mean_model, "--beir", beir],
    }[command]
    assert cli.main(argv) == 2
    one_line(capsys, str(Path(beir) / "qrels" / "test.tsv"), "score 0")


@pytest.mark.parametrize("text, problem", [("\ud800", "surrogate"), ("a\x00b", "NUL")])
def test_unencodable_texts_before_the_load(
    capsys, tmp_path, sae_folder, tiny_mean_model, no_model_loads, text, problem
):
    probe = tmp_path / "probe.jsonl"
    lines = [json.dumps({"text": t}) for t in ["a cat", "a dog", "the bank", text]]  # json escapes \ud800 and \u0000
    probe.write_text("\n".join(lines) + "\n")
    assert cli.main(["inspect", tiny_mean_model, "--probe", str(probe)]) == 2
    one_line(capsys, f"{probe}:4", "text", problem)
    assert cli.main(["sae", "browse", str(sae_folder), "--corpus", str(probe)]) == 2
    one_line(capsys, f"{probe}:4", problem)
    assert cli.main(["sae", "decompose", str(sae_folder), text]) == 2
    one_line(capsys, "TEXT", problem)
    assert cli.main(["sae", "contrast", str(sae_folder), "a cat", text]) == 2
    one_line(capsys, "TEXT_B", problem)


# ------------------------------------------------------------------------------ item 8: non-UTF-8 argv


def test_non_utf8_argument_is_one_line_exit_2(sae_folder):
    argv = [
        sys.executable.encode(),
        b"-m",
        b"aquin_monitor.cli",
        b"sae",
        b"decompose",
        str(sae_folder).encode(),
        b"\xff\xfe",
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    err = done.stderr.decode("utf-8", "replace").strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err
    assert "TEXT" in err and "not valid Unicode" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ item 9 and 14: sae train --out


def test_out_under_a_file_names_out(capsys, tmp_path, tiny_mean_model, corpus, no_model_loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert (
        cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(blocker / "sub" / "sae")]) == 2
    )
    one_line(capsys, "--out", str(blocker))


@pytest.mark.parametrize(
    "held",
    [
        ["metrics.jsonl", "events.jsonl", "snapshots/0/metrics.json"],
        [".aquin-monitor.lock"],
        ["notes.txt"],
        ["cfg.json", "sae.safetensors", "metrics.jsonl"],
    ],
)
def test_out_that_holds_a_run_or_other_files_is_refused(
    capsys, tmp_path, tiny_mean_model, corpus, no_model_loads, held
):
    run = tmp_path / "run"
    for name in held:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text('{"step": 1}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(run)]) == 2
    one_line(capsys, "--out", held[0].split("/")[0])
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_out_that_is_an_empty_folder_is_used(capsys, tmp_path, tiny_mean_model, corpus):
    out = tmp_path / "empty"
    out.mkdir()
    assert (
        cli.main(
            [
                "sae",
                "train",
                tiny_mean_model,
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--num-latents",
                "64",
                "--k",
                "4",
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert (out / "cfg.json").is_file()


# ------------------------------------------------------------------------------ item 10: control sequences


def test_labels_with_terminal_controls_print_escaped(capsys, sae_folder):
    evil = "card\x1b]0;pwned\x07\x1b[2J\x9b31m\u202egnp"
    features = [{"id": i, "label": f"{evil} {i}"} for i in range(64)]
    (sae_folder / "features.json").write_text(json.dumps({"features": features}))
    assert cli.main(["sae", "decompose", str(sae_folder), "cat dog bank", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "#" in out and "card" in out
    assert not any(ch in out for ch in "\x1b\x07\x9b\u202e")
    assert "card\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202egnp" in out


def test_category_names_with_controls_print_escaped(capsys, tmp_path, tiny_mean_model):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"query": f"q {w}", "document": f"d {w}", "category": "evil\x1b[2J" if i % 2 else "fine"}
        for i, w in enumerate(WORDS)
    ]
    pairs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli.main(["eval", tiny_mean_model, "--pairs", str(pairs), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[2J" in out


# ------------------------------------------------------------------------------ item 15: closed stdout


@pytest.mark.parametrize("command", ["sae-eval", "eval", "decompose"])
def test_json_file_is_written_even_when_stdout_is_closed(tmp_path, sae_folder, corpus, tiny_mean_model, command):
    out = tmp_path / "out.json"
    argv = {
        "sae-eval": ["sae", "eval", str(sae_folder), "--corpus", str(corpus)],
        "eval": ["eval", tiny_mean_model, "--beir", str(beir_folder(tmp_path, [1, 1, 1]))],
        "decompose": ["sae", "decompose", str(sae_folder), "cat dog"],
    }[command]
    process = subprocess.Popen(
        [sys.executable, "-m", "aquin_monitor.cli", *argv, "--json", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # unbuffered: each print reaches the closed pipe at once, as a terminal pipe through `head -1` does
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    process.stdout.close()  # the reader left (`| head -0`)
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141, err
    assert json.loads(out.read_text())["metrics" if command != "decompose" else "features"] is not None


# ------------------------------------------------------------------------------ item 16: a killed re-save


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_report_repairs_a_killed_resave_with_one_warning(capsys, tmp_path):
    import socket

    from aquin_monitor.snapshot_record import Snapshot

    run = tmp_path / "run"
    for step, value in ((0, 0.1), (2, 0.2), (4, 0.4)):
        Snapshot(
            step=step, tag="base" if step == 0 else "checkpoint", model="tiny", metrics={"geometry/anisotropy": value}
        ).save(run)
    (run / "metrics.jsonl").write_text('{"step": 4, "contrastive/gap": 0.3}\n')
    snapshots = run / "snapshots"
    os.replace(snapshots / "4", snapshots / ".4-old")  # killed between the two renames of a re-save of 4
    orphan = snapshots / f".2-tmp-{socket.gethostname()}-{dead_pid()}-ab12cd34"
    orphan.mkdir()
    (orphan / "snapshot.json").write_text("{half")
    assert cli.main(["report", str(run)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aquin-monitor: warning: repaired"), err
    assert "snapshot 4 was being re-saved" in err[0] and orphan.name in err[0]
    assert sorted(p.name for p in snapshots.iterdir()) == ["0", "2", "4"]
    page = (run / "report.html").read_text()
    assert 'id="snapshot-4"' in page and 'id="snapshot-2"' in page
    assert cli.main(["report", str(run)]) == 0 and capsys.readouterr().err == ""  # nothing left to repair


def test_load_run_reads_a_snapshot_set_aside_by_a_killed_resave(tmp_path):
    from aquin_monitor.report import load_run
    from aquin_monitor.snapshot_record import Snapshot

    Snapshot(step=4, tag="checkpoint", model="tiny", metrics={"geometry/anisotropy": 0.4}).save(tmp_path)
    os.replace(tmp_path / "snapshots" / "4", tmp_path / "snapshots" / ".4-old")
    with pytest.warns(RuntimeWarning, match="snapshot 4 was being re-saved"):
        run = load_run(tmp_path)
    assert [s.step for s in run.snapshots] == [4]


# ------------------------------------------------------------------------------ item 17: usetex in the user's style


@pytest.fixture
def usetex_without_latex(tmp_path, monkeypatch):
    """The user's matplotlibrc turns text.usetex on, and no LaTeX is installed (PATH holds no latex)."""
    import matplotlib

    empty = tmp_path / "no-latex-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with matplotlib.rc_context({"text.usetex": True}):
        yield


def test_usetex_fixture_breaks_a_plain_matplotlib_figure(usetex_without_latex):
    import io

    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().set_title("UMAP")
    with pytest.raises(RuntimeError, match="latex"):  # the reference: what a figure of ours did before
        figure.savefig(io.BytesIO(), format="png")


def test_report_and_sink_draw_the_umap_with_usetex_on(usetex_without_latex, tmp_path):
    from aquin_monitor import plots
    from aquin_monitor.report import write_report
    from aquin_monitor.sinks import JsonlSink
    from aquin_monitor.snapshot_record import Snapshot

    run = tmp_path / "run"
    umap = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    Snapshot(step=0, tag="base", model="tiny", metrics={"geometry/anisotropy": 0.1}, arrays={"umap": umap}).save(run)
    page = write_report(run).read_text()
    assert "<figcaption><b>UMAP by label</b>" in page and "UMAP by label: not drawn" not in page
    sink = JsonlSink(tmp_path / "sink")
    sink.log_figure("snapshot/umap_by_label", plots.umap_by_label(umap, None), step=0)
    sink.close()
    assert [p.suffix for p in (tmp_path / "sink").rglob("*.png")] == [".png"]


def test_sae_figures_render_with_usetex_on(usetex_without_latex):
    import io

    from aquin_monitor.sae.plots import feature_density_figure
    from aquin_monitor.sae.trace import LayerTrace, trace_figure

    feature_density_figure(np.array([0.0, 0.01, 0.2, 0.5])).savefig(io.BytesIO(), format="png")
    trace = LayerTrace(
        feature=3,
        activations=[0.0, 0.5, 1.0],
        co_active=[[], [{"feature": 4, "activation": 0.2}], []],
        classification="progressive",
        onset_layer=1,
        label="$x$",
        text="t",
    )
    trace_figure(trace).savefig(io.BytesIO(), format="png")
