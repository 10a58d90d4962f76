"""`aquin-monitor sae train --embeddings FILE.npy`: streamed training, the folder it writes, torchrun, bad input and
checkpoints."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from test_sae_cli import one_line_error
from test_sae_stream import rows, run_to_end

from aquin_monitor import cli
from aquin_monitor.rows import ArrayRows
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.train import SaeTrainConfig, train_rows

FLAGS = ["--num-latents", "32", "--k", "4", "--epochs", "2", "--train-batch-size", "64", "--seed", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def embeddings(tmp_path):
    path = tmp_path / "rows.npy"
    np.save(path, rows(n=600))
    return path


def test_streamed_training_writes_the_folder_of_the_same_sae(tiny_mean_model, embeddings, tmp_path, capsys):
    out = tmp_path / "sae"
    assert (
        cli.main(
            ["sae", "train", tiny_mean_model, "--embeddings", str(embeddings), "--out", str(out), *FLAGS, "--json", "-"]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    names = {p.name for p in out.iterdir()}
    assert {
        "cfg.json",
        "sae.safetensors",
        "training.jsonl",
        "quality.json",
        "quality.txt",
        "metrics.jsonl",
        "density.png",
        "training.png",
    } <= names
    assert (
        "training_state.pt" not in names and "features.json" not in names
    )  # checkpoint removed once the folder is complete
    reference = train_rows(
        ArrayRows(np.load(embeddings)),
        SaeTrainConfig(num_latents=32, k=4, max_epochs=2, batch_size=64, seed=2),
        show_progress=False,
    )
    saved = SparseAutoencoder.load(out)
    assert all(torch.equal(saved.state_dict()[k], reference.sae.state_dict()[k]) for k in saved.state_dict())
    assert printed["metrics"]["sae/n_texts"] == len(reference.held_out)
    assert [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()] == reference.history


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "--embeddings: no such file"),
        (np.zeros(5, dtype=np.float32), "expected a float array [n >= 2, d]"),
        (np.array([[1, 2], [3, 4]]), "expected a float array [n >= 2, d], got int64"),
        (np.array([{"$$": "<script>"}], dtype=object), "not a readable .npy array"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 0.0]], dtype=np.float32), "row 1 holds NaN or infinity"),
    ],
)
def test_bad_embeddings_exit_2_with_one_line(tiny_mean_model, tmp_path, capsys, content, expected):
    path = tmp_path / "bad.npy"
    if content is not None:
        np.save(path, content, allow_pickle=True)
    code = cli.main(["sae", "train", tiny_mean_model, "--embeddings", str(path), "--out", str(tmp_path / "o"), *FLAGS])
    assert code == 2
    one_line_error(capsys, expected)


def test_a_checkpoint_of_other_settings_exits_2_naming_the_setting(tiny_mean_model, embeddings, tmp_path, capsys):
    out = tmp_path / "sae"
    train_rows(
        ArrayRows(np.load(embeddings)),
        SaeTrainConfig(
            num_latents=32, k=4, max_epochs=1, batch_size=128, seed=2, checkpoint=str(out / "training_state.pt")
        ),
        show_progress=False,
    )
    code = cli.main(["sae", "train", tiny_mean_model, "--embeddings", str(embeddings), "--out", str(out), *FLAGS])
    assert code == 2
    one_line_error(capsys, "training_state.pt: batch_size: 128 in the checkpoint, 64 now")
    assert not (out / "cfg.json").exists()


def test_corpus_under_torchrun_is_refused(tiny_mean_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert (
        cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(tmp_path / "o"), *FLAGS]) == 2
    )
    one_line_error(capsys, "--corpus: under torchrun every rank would embed the corpus")


def test_torchrun_two_ranks_write_one_folder_of_the_one_process_sae(tiny_mean_model, embeddings, tmp_path):
    out = tmp_path / "sae"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "aquin_monitor",
        "sae",
        "train",
        tiny_mean_model,
        "--embeddings",
        str(embeddings),
        "--out",
        str(out),
        *FLAGS,
    ]
    done = run_to_end(command, tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.count("sae/fvu") == 1  # rank zero reports, once
    saved = SparseAutoencoder.load(out)
    reference = train_rows(
        ArrayRows(np.load(embeddings)),
        SaeTrainConfig(num_latents=32, k=4, max_epochs=2, batch_size=64, seed=2),
        show_progress=False,
    )
    for name, tensor in reference.sae.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor, rtol=0, atol=1e-5)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # one line per epoch, from rank zero only


def test_a_store_trains_the_same_sae_as_its_rows_and_a_missing_store_exits_2(
    tiny_mean_model, embeddings, tmp_path, capsys
):
    from aquin_monitor.store import write_store

    x = np.load(embeddings)
    write_store(
        tmp_path / "store",
        [x[:250], x[250:]],
        [f"doc-{i}" for i in range(len(x))],
        model_fingerprint="m",
        corpus_hash="c",
        shard_rows=200,
    )
    assert (
        cli.main(
            ["sae", "train", tiny_mean_model, "--store", str(tmp_path / "store"), "--out", str(tmp_path / "a"), *FLAGS]
        )
        == 0
    )
    assert (
        cli.main(
            ["sae", "train", tiny_mean_model, "--embeddings", str(embeddings), "--out", str(tmp_path / "b"), *FLAGS]
        )
        == 0
    )
    a, b = SparseAutoencoder.load(tmp_path / "a"), SparseAutoencoder.load(tmp_path / "b")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    capsys.readouterr()
    assert (
        cli.main(
            [
                "sae",
                "train",
                tiny_mean_model,
                "--store",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "c"),
                *FLAGS,
            ]
        )
        == 2
    )
    one_line_error(capsys, "no embedding store here")
