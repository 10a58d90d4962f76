"""The CLI toolkit every verb shares (aquin_monitor.cli_tools): one home for each helper, one error format,
atomic emit for every verb, and ``sae train``'s flags derived from SaeTrainConfig."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
from pathlib import Path

import pytest

from aquin_monitor import cli
from aquin_monitor.cli_tools import InputError, check_output_dir, check_output_file, emit, finite_float, positive_int
from aquin_monitor.sae.config import SaeTrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "aquin_monitor"
VERB_MODULES = ("cli.py", "sae/cli.py", "sae/analysis_cli.py", "sae/page_cli.py", "sae/convert_cli.py")
SHARED = {
    "positive_int",
    "finite_float",
    "emit",
    "check_output_file",
    "_check_output_file",
    "_check_output",
    "check_output_dir",
    "declared_dimension",
    "load_sae_for",
    "check_dimension",
    "_check_dimension",
    "_write_atomically",
    "relevance_by_position",
}


def definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found.setdefault(node.name, []).append(path.relative_to(PACKAGE).as_posix())
    return found


def test_each_shared_helper_has_one_home():
    found = definitions()
    homes = {name: found.get(name, []) for name in SHARED}
    assert {name: where for name, where in homes.items() if where} == {
        **{
            name: ["cli_tools.py"]
            for name in (
                "positive_int",
                "finite_float",
                "emit",
                "check_output_file",
                "check_output_dir",
            )
        },
        "declared_dimension": ["encoders.py"],  # a fact of the model, read by library code too
        "load_sae_for": ["sae/verb_inputs.py"],  # loads SAEs: beside the sae verbs, so cli_tools imports no sae/
    }
    # before: OutputPathError, SaeInputError, AnalysisInputError, PageInputError in two message formats
    cli_modules = (*VERB_MODULES, "cli_tools.py", "sae/verb_inputs.py")
    cli_classes = sorted(
        name for name, homes in found.items() for where in homes if where in cli_modules and name[0].isupper()
    )
    assert cli_classes == ["CommandParser", "InputError", "LoadedSae"]  # one home each (checked below)
    assert {name: found[name] for name in cli_classes} == {
        "CommandParser": ["cli_tools.py"],
        "InputError": ["cli_tools.py"],
        "LoadedSae": ["sae/verb_inputs.py"],
    }


def test_verbs_write_json_only_through_emit():
    """Before: three _emit copies; `sae eval --json` used Path.write_text (not atomic)."""
    for name in VERB_MODULES:
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        assert not {call for call in calls if call.endswith(("json.dumps", "write_text", "atomic_write_text"))}, name


def test_no_verb_module_imports_the_main_cli():
    """The circle cli.py -> sae/cli.py -> sae/analysis_cli.py, sae/page_cli.py -> cli.py (and -> sae/cli.py) is open:
    the sae verbs import the toolkit, never the main CLI nor the module that registers them."""
    for name in ("cli", "analysis_cli", "page_cli", "convert_cli"):
        tree = ast.parse((PACKAGE / "sae" / f"{name}.py").read_text(encoding="utf-8"))
        imported = {(node.level, node.module) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert (2, "cli") not in imported and (1, "cli") not in imported, (name, imported)
        assert (2, "cli_tools") in imported
    tree = ast.parse((PACKAGE / "cli_tools.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and "cli" in n.module]


def test_input_error_format():
    error = InputError("c.jsonl", "need at least 2 texts, got 1", line=1, field="text")
    assert str(error) == "c.jsonl:1: text: need at least 2 texts, got 1"
    assert str(InputError("out", "is a folder", field="--json")) == "out: --json: is a folder"
    assert str(InputError("x.jsonl", "empty file")) == "x.jsonl: empty file"
    assert isinstance(InputError("a", "b"), ValueError)  # the CLI's exit-2 family


@pytest.mark.parametrize("text, value", [("1", 1), ("12", 12)])
def test_positive_int_accepts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "x", ""])
def test_positive_int_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "x"])
def test_finite_float_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        finite_float(text)


def test_output_checks_create_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"--json: .*is a file, not a folder"):
        check_output_file(blocker / "out.json", "--json")
    with pytest.raises(InputError, match=r"--html: is a folder"):
        check_output_file(tmp_path, "--html")
    with pytest.raises(InputError, match=r"--out: is a file, not a folder"):
        check_output_dir(blocker, "--out")
    check_output_file(tmp_path / "new" / "deeper" / "out.json", "--json")
    check_output_dir(tmp_path / "new" / "dir", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_emit_writes_json_atomically_and_keeps_the_old_file_on_ctrl_c(tmp_path, capsys, monkeypatch):
    out = tmp_path / "result.json"
    emit({"metrics": {"sae/fvu": float("nan"), "label": "<script>$$"}}, str(out), ["table"])
    assert json.loads(out.read_text(encoding="utf-8")) == {"metrics": {"sae/fvu": None, "label": "<script>$$"}}
    assert capsys.readouterr().out == "table\n"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        emit({"metrics": {}}, str(out), "table")
    monkeypatch.undo()
    capsys.readouterr()
    assert json.loads(out.read_text(encoding="utf-8"))["metrics"]["label"] == "<script>$$"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    emit({"a": 1}, "-", "table")
    assert json.loads(capsys.readouterr().out) == {"a": 1}  # JSON only, no table


def test_sae_eval_json_is_written_atomically(tmp_path, capsys, monkeypatch):
    """`sae eval --json` wrote with Path.write_text before: a Ctrl-C mid-write left half a file."""
    from aquin_monitor.sae import evaluate

    out = tmp_path / "q.json"
    out.write_text('{"old": true}\n')
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"text {i}"}) for i in range(4)) + "\n")
    import numpy as np

    monkeypatch.setattr(
        "aquin_monitor.sae.embeddings.embed_corpus", lambda model, texts, **kw: np.ones((len(texts), 384), np.float32)
    )
    monkeypatch.setattr(evaluate, "quality_metrics", lambda sae, x: ({"sae/fvu": 0.5}, None))

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    code = cli.main(
        ["sae", "eval", "default", "--corpus", str(corpus), "--json", str(out), "--no-progress", "--no-cache"]
        + ["--no-probe", "--no-retrieval"]
    )
    monkeypatch.undo()
    assert code == 130
    assert out.read_text() == '{"old": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "q.json"]


def sae_train_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sae = commands.choices["sae"]
    return next(a for a in sae._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]


def test_every_sae_train_config_field_has_a_flag_with_the_fields_default():
    from aquin_monitor.sae.cli import SHARED_FIELDS

    actions = {action.dest: action for action in sae_train_parser()._actions}
    for field in dataclasses.fields(SaeTrainConfig):
        assert field.name in actions, field.name
        flag_default = actions[field.name].default
        assert flag_default == field.default, (field.name, flag_default, field.default)
        if field.name not in SHARED_FIELDS:
            assert actions[field.name].help and "%" not in actions[field.name].help.replace("%%", "")


def test_sae_train_flags_build_the_config(tmp_path):
    args = cli.build_parser().parse_args(
        [
            "sae",
            "train",
            "default",
            "--corpus",
            "c.jsonl",
            "--out",
            str(tmp_path),
            "--epochs",
            "3",
            "--train-batch-size",
            "64",
            "--patience",
            "5",
            "--val-fraction",
            "0.1",
            "--auxk-coefficient",
            "0.5",
            "--dead-after",
            "7",
        ]
    )
    config = SaeTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SaeTrainConfig)})
    assert config == SaeTrainConfig(
        max_epochs=3, batch_size=64, patience=5, val_fraction=0.1, auxk_coefficient=0.5, dead_after=7
    )
    argv = ["sae", "train", "default", "--corpus", "c", "--out", "o", "--max-epochs", "4"]
    assert cli.build_parser().parse_args(argv).max_epochs == 4


BAD_FLAGS = [("--max-epochs", "0"), ("--lr", "nan"), ("--k", "-1"), ("--val-fraction", "inf")]


@pytest.mark.parametrize("flag, value", BAD_FLAGS)
def test_bad_sae_train_flags_are_one_line(capsys, tmp_path, flag, value):
    code = cli.main(["sae", "train", "default", "--corpus", "c.jsonl", "--out", str(tmp_path), flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err, err
