"""Issue 16, points 5 and 9-12: the CLI fails early, exactly and quietly.

Every bad input or output path is found before the first model load (the loaders are replaced by
ones that fail the test if called), messages name the file, ``report`` refuses a folder that is not
a run, a closed pipe and Ctrl-C end quietly, and nothing half-written is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor import encoders
from aquin_monitor.cli import main
from aquin_monitor.sinks import JsonlFormatError, read_jsonl
from aquin_monitor.snapshot_record import Snapshot

ROOT = Path(__file__).parents[1]
TEXTS = [f"sentence number {i} about topic {i % 3}" for i in range(12)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def probe(tmp_path) -> Path:
    return write_jsonl(tmp_path / "probe.jsonl", [{"text": t, "label": f"t{i % 3}"} for i, t in enumerate(TEXTS)])


@pytest.fixture
def pairs(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", [{"query": f"q {t}", "document": t} for t in TEXTS[:5]])


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was loaded: {args}")

    monkeypatch.setattr(encoders, "load_model", refuse)
    monkeypatch.setattr(encoders, "load_cross_encoder", refuse)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- point 9


def bad_outputs(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {
        "json under a file": (["--json", blocker / "out.json"], "--json", str(blocker)),
        "json is a folder": (["--json", folder], "--json", str(folder)),
        "run-dir is a file": (["--run-dir", blocker], "--run-dir", str(blocker)),
        "run-dir under a file": (["--run-dir", blocker / "run"], "--run-dir", str(blocker)),
    }


@pytest.mark.parametrize("case", ["json under a file", "json is a folder", "run-dir is a file", "run-dir under a file"])
def test_inspect_output_paths_are_checked_before_any_model_load(
    capsys, tmp_path, tiny_mean_model, probe, no_model_load, case
):
    extra, option, named = bad_outputs(tmp_path)[case]
    before = files_under(tmp_path)
    code, out, err = run(capsys, "inspect", tiny_mean_model, "--probe", probe, "--no-progress", *extra)
    assert code == 2 and out == ""
    one_error_line(err, option, named)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("command", ["eval", "diff"])
def test_eval_and_diff_json_path_checked_before_any_model_load(
    capsys, tmp_path, tiny_mean_model, probe, pairs, no_model_load, command
):
    extra, option, named = bad_outputs(tmp_path)["json under a file"]
    argv = (
        ["eval", tiny_mean_model, "--pairs", pairs]
        if command == "eval"
        else ["diff", tiny_mean_model, tiny_mean_model, "--probe", probe]
    )
    code, _, err = run(capsys, *argv, "--no-progress", *extra)
    assert code == 2
    one_error_line(err, option, named)


# ---------------------------------------------------------------------------------- point 10


def test_diff_other_not_a_model_fails_before_base_is_loaded(capsys, tmp_path, tiny_mean_model, probe, no_model_load):
    not_a_model = tmp_path / "checkpoint-typo"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    code, _, err = run(capsys, "diff", tiny_mean_model, not_a_model, "--probe", probe, "--no-progress")
    assert code == 2
    one_error_line(err, str(not_a_model), "config.json")


def test_missing_adapter_fails_before_the_model_loads(capsys, tmp_path, tiny_mean_model, probe, no_model_load):
    code, _, err = run(
        capsys, "inspect", tiny_mean_model, "--probe", probe, "--adapter", tmp_path / "no-adapter", "--no-progress"
    )
    assert code == 2
    one_error_line(err, str(tmp_path / "no-adapter"))


def test_eval_checks_the_model_before_loading_the_cross_encoder(
    capsys, tmp_path, tiny_cross_encoder, pairs, no_model_load
):
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    code, _, err = run(
        capsys, "eval", not_a_model, "--pairs", pairs, "--cross-encoder", tiny_cross_encoder, "--no-progress"
    )
    assert code == 2
    one_error_line(err, str(not_a_model))


@pytest.mark.parametrize(
    "texts, complaint", [(["one", "two"], "at least 3 texts, got 2"), (["same"] * 5, "all 5 texts are identical")]
)
@pytest.mark.parametrize("command", ["inspect", "diff"])
def test_unusable_probe_named_before_any_model_load(
    capsys, tmp_path, tiny_mean_model, no_model_load, texts, complaint, command
):
    small = write_jsonl(tmp_path / "small-probe.jsonl", [{"text": t} for t in texts])
    models = [tiny_mean_model] if command == "inspect" else [tiny_mean_model, tiny_mean_model]
    code, _, err = run(capsys, command, *models, "--probe", small, "--no-progress")
    assert code == 2
    one_error_line(err, str(small), complaint)


# ---------------------------------------------------------------------------------- point 5


def test_inspect_never_replaces_a_training_runs_snapshot(capsys, tmp_path, tiny_mean_model, probe, no_model_load):
    run_dir = tmp_path / "run"
    Snapshot(
        step=0,
        tag="base",
        model="tiny",
        metrics={"geometry/anisotropy": 0.3},
        arrays={"embeddings": np.ones((3, 2), np.float32)},
    ).save(run_dir)
    before = files_under(run_dir)
    code, _, err = run(capsys, "inspect", tiny_mean_model, "--probe", probe, "--run-dir", run_dir, "--no-progress")
    assert code == 2
    one_error_line(err, str(run_dir / "snapshots" / "0"), "'base'")
    assert files_under(run_dir) == before


def test_inspect_replaces_its_own_earlier_snapshot(capsys, tmp_path, tiny_mean_model, tiny_cls_model, probe):
    run_dir = tmp_path / "run"
    for model in (tiny_mean_model, tiny_cls_model):
        code, _, err = run(
            capsys, "inspect", model, "--probe", probe, "--run-dir", run_dir, "--no-umap", "--no-progress"
        )
        assert code == 0, err
    assert Snapshot.load(run_dir / "snapshots" / "0").model == tiny_cls_model
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["0"]


def test_inspect_into_a_folder_a_live_run_holds_is_refused(capsys, tmp_path, tiny_mean_model, probe, no_model_load):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom aquin_monitor.sinks import JsonlSink\n"
            "JsonlSink(sys.argv[1]); print('ready', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        code, _, err = run(capsys, "inspect", tiny_mean_model, "--probe", probe, "--run-dir", run_dir, "--no-progress")
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    one_error_line(err, str(run_dir), f"pid {holder.pid}")
    assert not (run_dir / "snapshots").exists()


# ---------------------------------------------------------------------------------- point 11


@pytest.mark.parametrize("content", [None, {"notes.txt": b"hello"}, {"report.html": b"<html></html>"}])
def test_report_on_a_folder_that_is_not_a_run_exits_2_and_writes_nothing(capsys, tmp_path, content):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    for name, data in (content or {}).items():
        (folder / name).write_bytes(data)
    before = files_under(folder)
    code, out, err = run(capsys, "report", folder)
    assert code == 2 and out == ""
    one_error_line(err, str(folder), "not a run folder")
    assert files_under(folder) == before


def test_report_on_a_missing_folder_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "report", tmp_path / "nope")
    assert code == 2
    one_error_line(err, str(tmp_path / "nope"))


def test_non_utf8_line_is_named_by_the_report_and_the_reader(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = [
        json.dumps({"step": s, "contrastive/loss": 1.0 / (s + 1), "grad_norm/layer.00": 0.5}).encode() for s in (1, 3)
    ]
    bad = b'{"step": 2, "contrastive/loss": 0.5, "note": "caf\xe9"}'  # latin-1, not UTF-8
    (run_dir / "metrics.jsonl").write_bytes(good[0] + b"\n" + bad + b"\n" + good[1] + b"\n")
    with pytest.raises(JsonlFormatError, match=r"metrics.jsonl, line 2: not valid UTF-8"):
        read_jsonl(run_dir / "metrics.jsonl")
    code, _, err = run(capsys, "report", run_dir)
    assert code == 0, err
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "metrics.jsonl:2: not valid UTF-8" in page
    assert "\ufffd" not in page  # nothing silently decoded


# ---------------------------------------------------------------------------------- point 12


def test_a_closed_pipe_ends_quietly(tmp_path, tiny_mean_model, pairs):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aquin_monitor.cli",
            "eval",
            tiny_mean_model,
            "--pairs",
            str(pairs),
            "--json",
            "-",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    process.stdout.close()  # the reader is gone before anything is printed (like `| head -0`)
    err = process.stderr.read().decode()
    code = process.wait(timeout=300)
    assert code == 141, err  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err and "error" not in err


def test_ctrl_c_is_one_line_exit_130_and_no_partial_files(capsys, tmp_path, tiny_mean_model, probe, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(encoders, "load_model", interrupted)
    out_json = tmp_path / "out" / "inspect.json"
    # --no-cache: the session's cache may hold this probe pass, and then no model is loaded to interrupt
    code, out, err = run(
        capsys,
        "inspect",
        tiny_mean_model,
        "--probe",
        probe,
        "--json",
        out_json,
        "--run-dir",
        tmp_path / "run",
        "--no-progress",
        "--no-cache",
    )
    assert code == 130 and out == ""
    assert err.strip().splitlines()[-1] == "aquin-monitor inspect: interrupted"
    assert "Traceback" not in err
    assert not out_json.parent.exists()
    assert not (tmp_path / "run" / "snapshots").exists()


def test_ctrl_c_while_writing_the_json_leaves_no_partial_file(capsys, tmp_path, tiny_mean_model, probe, monkeypatch):
    from aquin_monitor import cli

    real_replace = os.replace

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.os, "replace", interrupted_replace)
    out_json = tmp_path / "inspect.json"
    code, _, err = run(
        capsys, "inspect", tiny_mean_model, "--probe", probe, "--json", out_json, "--no-umap", "--no-progress"
    )
    monkeypatch.setattr(cli.os, "replace", real_replace)
    assert code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.jsonl"]  # neither inspect.json nor a temp file


def test_sigint_during_a_real_run_exits_130_with_one_line(tmp_path, tiny_mean_model, probe):
    out_json = tmp_path / "inspect.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aquin_monitor.cli",
            "inspect",
            tiny_mean_model,
            "--probe",
            str(probe),
            "--json",
            str(out_json),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--no-cache",
        ],  # a cache hit could finish before the signal
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        # a suite started in the background of a script inherits SIGINT ignored, and Python then keeps it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr.readline().startswith("read 12 probe texts")  # inputs checked; the model loads next
    process.send_signal(signal.SIGINT)
    err = process.stderr.read()
    assert process.wait(timeout=300) == 130, err
    assert err.strip().splitlines()[-1] == "aquin-monitor inspect: interrupted" and "Traceback" not in err
    assert not out_json.exists()
    leftovers = (
        [p for p in (tmp_path / "run").rglob("*") if p.name != ".aquin-monitor.lock"]
        if (tmp_path / "run").exists()
        else []
    )
    assert not leftovers


def test_read_only_output_folder_is_refused_before_any_model_load(
    capsys, tmp_path, tiny_mean_model, probe, no_model_load, monkeypatch
):
    # the tests may run as root, for whom every folder is writable: the OS answer is replaced for one folder
    from aquin_monitor import cli

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        cli.os, "access", lambda path, mode: False if Path(path) == read_only else real_access(path, mode)
    )
    code, _, err = run(
        capsys, "inspect", tiny_mean_model, "--probe", probe, "--json", read_only / "sub" / "out.json", "--no-progress"
    )
    assert code == 2
    one_error_line(err, "--json", f"the folder {read_only} is not writable")
    assert list(read_only.iterdir()) == []
