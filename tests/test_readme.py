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


def example_pairs_file(text: str) -> str:
    """The README's example ``pairs.jsonl``: the ```json block under "Bring your own eval pairs"."""
    section = text[text.index("### Bring your own eval pairs") :]
    return re.findall(r"^```json\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)[0]


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
    reads_example = re.search(r'^eval_pairs = read_pairs\("pairs.jsonl"\)', block, flags=re.MULTILINE) is not None
    if reads_example:  # the eval-pairs block reads the example file shown above it
        (tmp_path / "pairs.jsonl").write_text(example_pairs_file(README.read_text(encoding="utf-8")), encoding="utf-8")
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
    captured = capfd.readouterr()
    assert "deprecated" not in captured.err.lower(), captured.err
    if reads_example:
        check_eval_pairs_block(namespace)
        return
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    run_dirs = re.findall(r'"(runs/[^"]+)"', block)
    assert run_dirs, "a snippet names the run folder it writes"
    run = tmp_path / run_dirs[0]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))  # 512 pairs in batches of 32, one epoch
    for r in rows:
        assert {"grad_norm/total", "contrastive/pos_sim", "contrastive/gap", "optim/lr"} <= r.keys()
    assert sorted(int(p.name) for p in (run / "snapshots").iterdir() if p.name.isdigit()) == [0, 16]
    check_verdict_of_run(run, namespace["snapshots"], captured.out)


def check_eval_pairs_block(namespace: dict) -> None:
    """The README's 3-line pairs file reads as 3 queries over 4 documents (the negative is one), named as given."""
    pairs = namespace["eval_pairs"]
    assert len(pairs.queries) == 3 and len(pairs.corpus) == 4
    assert sorted(grade for docs in pairs.qrels.values() for grade in docs.values()) == [1, 1, 2]
    assert sum(len(negatives) for negatives in pairs.hard_negatives.values()) == 1
    runner = namespace["snapshots"]
    assert runner.retrieval is pairs and runner.model_name == "my-org/support-search-v2"
    assert len(runner.probe.texts) == 7  # probe=None: the queries and documents themselves


def check_verdict_of_run(run: Path, runner, printed: str) -> None:
    """Issue 25 points 2 and 3: a run set up as the README says has retrieval rows, its model's name, and a verdict
    (per-query NDCG@10 from the base to the last snapshot) printed at the end and on the report's first line."""
    import json

    import numpy as np

    from aquin_monitor.signals.comparison import paired_comparison

    last = json.loads((run / "snapshots" / "16" / "snapshot.json").read_text(encoding="utf-8"))
    assert last["model"] == runner.model_name and "retrieval/ndcg@10" in last["metrics"]
    record = last["details"]["verdict"]["base"]
    base_scores = np.load(run / "snapshots" / "0" / "arrays.npz")["query_ndcg@10"]
    last_scores = np.load(run / "snapshots" / "16" / "arrays.npz")["query_ndcg@10"]
    assert len(last_scores) == len(runner.retrieval.queries)
    expected = paired_comparison(base_scores, last_scores, seed=runner.seed)
    assert (record["delta"], record["ci_low"], record["ci_high"]) == pytest.approx(
        (expected.delta, expected.ci_low, expected.ci_high)
    )
    assert (record["better"], record["worse"]) == (expected.better, expected.worse)
    assert last["metrics"]["verdict/queries_better"] == expected.better
    assert f"aquin-monitor: {record['sentence']}" in printed.splitlines()
    page = (run / "report.html").read_text(encoding="utf-8")
    body = page[page.index("<body>") + len("<body>") :]
    assert body.startswith('<div id="verdict"') and record["sentence"].split(":")[0] in body[:300]
    assert runner.model_name in page


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
