"""The README's Python blocks run as pasted (issue 15 point 1).

Each ```python block of README.md is executed as is, in a fresh namespace and a temporary working
directory, with one substitution: ``load_model("default")`` loads the tiny test model instead of the
bundled MiniLM (``aquin_monitor.encoders.bundled_model_path`` patched), so the blocks run in seconds.
What they promise to write is then checked against their own words.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aquin_monitor.sinks import read_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_python_blocks_are_found():
    blocks = python_blocks("intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n")
    assert blocks == ["x = 1\n", "y = 2\n"]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_both_integration_snippets():
    assert len(BLOCKS) >= 2
    assert any("TrainerEmbeddingMonitor" in b for b in BLOCKS) and any("LightningEmbeddingMonitor" in b for b in BLOCKS)
    for block in BLOCKS:
        assert "../shared" not in block


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_pasted(index, tiny_mean_model, tmp_path, monkeypatch, capfd):
    """... without a deprecation warning caused by the block or our package (issue 25 point 6: the old
    ``sentence_transformers.losses`` import, ``warmup_ratio``, which transformers reports on stderr),
    and without writing outside its run folder (Lightning's ``./lightning_logs/``)."""
    import warnings

    import aquin_monitor.encoders

    monkeypatch.setattr(aquin_monitor.encoders, "bundled_model_path", lambda: tiny_mean_model)
    monkeypatch.chdir(tmp_path)
    block = BLOCKS[index]
    namespace = {"__name__": f"readme_block_{index}"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)  # noqa: S102 - the test's purpose
    ours = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
        and (w.filename.startswith("README.md") or "aquin_monitor" in w.filename)
    ]
    assert not ours
    printed = capfd.readouterr().err
    assert "deprecated" not in printed.lower(), printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    run_dirs = re.findall(r'"(runs/[^"]+)"', block)
    assert run_dirs, "a snippet names the run folder it writes"
    run = tmp_path / run_dirs[0]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))  # 512 pairs in batches of 32, one epoch
    for r in rows:
        assert {"grad_norm/total", "contrastive/pos_sim", "contrastive/gap", "optim/lr"} <= r.keys()
    assert sorted(int(p.name) for p in (run / "snapshots").iterdir() if p.name.isdigit()) == [0, 16]


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_follow_up_commands_work_in_a_fresh_shell(tmp_path):
    """Issue 25 point 1: after the set-up, a new shell that runs the README's activation line finds the tools.

    The block after "The two commands" is run as written in a shell with an empty environment (no PATH entry
    of this process, no virtualenv), on a run folder written here, so `tensorboard` and `aquin-monitor report`
    must come from the activated `.venv`.
    """
    import subprocess

    root = README.parent
    if not (root / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv: this checkout was not set up with scripts/setup.sh (make test does it)")
    block = next(b for b in bash_blocks(README.read_text(encoding="utf-8")) if "source .venv/bin/activate" in b)
    run = tmp_path / "runs" / "infonce"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "contrastive/loss": 2.0}\n', encoding="utf-8")
    script = block.replace("source .venv/bin/activate", f"source {root / '.venv' / 'bin' / 'activate'}")
    script = script.replace("tensorboard --logdir runs/infonce", "tensorboard --version")  # the server would block
    environment = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["bash", "-euc", script + "\npython -c 'import lightning, peft, sentence_transformers, aquin_monitor'\n"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "report.html").is_file()
