"""Sinks: write through each one, then read back what landed on disk with the tool's own reader.

TensorBoard event files are read with tensorboard's EventAccumulator; W&B offline runs by
parsing the run's ``.wandb`` transaction log (LevelDB-log framing, CRC-checked) into
``wandb_internal_pb2.Record`` messages; JSONL with :mod:`json` rejecting NaN.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aquin_monitor.sinks import (  # noqa: E402
    JsonlFormatError,
    JsonlSink,
    LightningLoggerSink,
    MultiSink,
    Sink,
    SinkWarning,
    TensorBoardSink,
    WandbSink,
    read_jsonl,
    sinks_for_hf,
    sinks_for_lightning,
)
from aquin_monitor.sinks.jsonl import embeddings_path, figure_path  # noqa: E402
from aquin_monitor.sinks.tensorboard import CHART_FAMILIES  # noqa: E402

ALARM = {"step": 2, "kind": "spike", "layer": "layer.03", "message": "robust z = 9.1", "value": 9.1}


def strict_json(line: str):
    """json.loads that refuses NaN/Infinity (Python's default accepts them; JSON does not)."""
    return json.loads(line, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name} in {line!r}"))


@pytest.fixture
def figure():
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1], [0, 1])
    yield fig
    plt.close(fig)


# --------------------------------------------------------------------------------------- JSONL


def test_jsonl_metrics_one_valid_line_per_call_with_null_for_non_finite(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log_scalars({"contrastive/gap": 0.25, "grad_norm/total": float("nan")}, step=1)
    sink.log_scalars({"contrastive/gap": np.float32(0.5), "grad_norm/total": np.inf}, step=np.int64(2))
    sink.close()

    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [strict_json(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    assert [r["contrastive/gap"] for r in records] == [0.25, 0.5]
    assert [r["grad_norm/total"] for r in records] == [None, None]
    assert all(isinstance(r["time"], float) and r["time"] > 1.6e9 for r in records)
    assert read_jsonl(tmp_path / "metrics.jsonl") == records


def test_jsonl_events_and_snapshots(tmp_path):
    sink = JsonlSink(tmp_path)
    assert (tmp_path / "events.jsonl").read_text() == ""  # exists from the start: no alarm yet
    sink.log_event(ALARM)
    sink.log_event({"step": 5, "kind": "nan", "layer": None, "message": "NaN in loss", "value": float("nan")})
    sink.log_summary(
        {"geometry": {"anisotropy": np.float64(0.125), "id_pca95": np.int64(17)}, "spectrum": np.array([1.0, np.nan])},
        step=100,
    )
    sink.close()

    events = [strict_json(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [{k: e[k] for k in ALARM} for e in events] == [
        ALARM,
        {"step": 5, "kind": "nan", "layer": None, "message": "NaN in loss", "value": None},
    ]
    (snapshot,) = [strict_json(line) for line in (tmp_path / "snapshots.jsonl").read_text().splitlines()]
    assert snapshot["step"] == 100
    assert snapshot["geometry"] == {"anisotropy": 0.125, "id_pca95": 17}
    assert snapshot["spectrum"] == [1.0, None]


def test_jsonl_histogram_summary_statistics_hand_checked(tmp_path):
    sink = JsonlSink(tmp_path)
    values = np.concatenate([np.arange(101, dtype=np.float64), [np.nan, np.inf]])  # 0..100 plus 2 non-finite
    sink.log_histogram("contrastive/pos_sim_hist", values, step=3)
    sink.log_histogram("empty", np.array([np.nan]), step=3)
    sink.close()

    full, empty = read_jsonl(tmp_path / "histograms.jsonl")
    assert full["tag"] == "contrastive/pos_sim_hist" and full["step"] == 3
    assert (full["count"], full["nonfinite"]) == (101, 2)
    assert (full["min"], full["max"], full["mean"]) == (0.0, 100.0, 50.0)
    assert full["std"] == pytest.approx(np.sqrt((101**2 - 1) / 12))  # population sd of 0..n-1
    # linear-interpolation quantiles of 0..100 are the percentages themselves
    assert full["quantiles"] == {
        "p01": 1.0,
        "p05": 5.0,
        "p25": 25.0,
        "p50": 50.0,
        "p75": 75.0,
        "p95": 95.0,
        "p99": 99.0,
    }
    assert (empty["count"], empty["nonfinite"], empty["mean"], empty["quantiles"]) == (0, 1, None, None)


def test_jsonl_figure_png_and_embeddings_npz(tmp_path, figure):
    sink = JsonlSink(tmp_path)
    sink.log_figure("geometry/similarity histogram", figure, step=7)
    embeddings = np.arange(12, dtype=np.float32).reshape(4, 3)
    sink.log_embeddings("probe", embeddings, ["a", "b", "c", "d"], step=7)
    sink.close()

    png = tmp_path / "figures" / "geometry_similarity_histogram" / "7.png"
    assert png == figure_path(tmp_path, "geometry/similarity histogram", 7)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(png).shape[:2] == (75, 100)  # 1.5 x 2 inches at 50 dpi
    assert plt.fignum_exists(figure.number)  # the caller owns the figure: not closed by the sink

    with np.load(embeddings_path(tmp_path, "probe", 7)) as saved:
        np.testing.assert_array_equal(saved["embeddings"], embeddings)
        assert saved["labels"].tolist() == ["a", "b", "c", "d"]
    assert not list(tmp_path.rglob("*.partial"))


def test_jsonl_bad_input_raises_and_writes_nothing(tmp_path):
    sink = JsonlSink(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        sink.log_scalars({"step": 1.0}, step=1)
    with pytest.raises(TypeError, match="cannot write"):
        sink.log_scalars({"odd": object()}, step=1)
    with pytest.raises(ValueError, match="non-negative integer"):
        sink.log_scalars({"a": 1.0}, step=1.5)
    with pytest.raises(ValueError, match="kind"):
        sink.log_event({"step": 1, "kind": ""})
    with pytest.raises(ValueError, match="labels"):
        sink.log_embeddings("e", np.zeros((3, 2)), ["x"], step=0)
    sink.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""
    assert (tmp_path / "events.jsonl").read_bytes() == b""


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2, "x": NaN\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(JsonlFormatError, match=r"metrics\.jsonl, line 3: invalid JSON") as info:
        read_jsonl(path)
    assert isinstance(info.value, ValueError)
    path.write_text('{"step": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(JsonlFormatError, match="line 2: expected a JSON object"):
        read_jsonl(path)


def test_jsonl_cuts_a_partial_line_left_by_a_crash(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"', encoding="utf-8")
    with pytest.warns(RuntimeWarning, match="partial line"):
        sink = JsonlSink(tmp_path)
    sink.log_scalars({"a": 3.0}, step=3)
    sink.close()
    assert [(r["step"], r["a"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [(1, 1.0), (3, 3.0)]


# ------------------------------------------------------------------------------------ MultiSink


class ExplodingSink:
    def __init__(self):
        self.calls = 0
        self.closed = False

    def log_scalars(self, metrics, step):
        self.calls += 1
        raise OSError("disk full")

    def log_event(self, event):
        self.calls += 1
        raise OSError("disk full")

    def close(self):
        self.closed = True


def test_multisink_switches_a_failing_call_kind_off_after_one_warning(tmp_path, caplog):
    exploding = ExplodingSink()
    jsonl = JsonlSink(tmp_path)
    sink = MultiSink([exploding, jsonl])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        sink.log_scalars({"contrastive/gap": 0.1}, step=1)
        sink.log_scalars({"contrastive/gap": 0.2}, step=2)
        sink.log_event(ALARM)
        sink.log_event(ALARM)
    sink.close()

    sink_warnings = [str(w.message) for w in caught if issubclass(w.category, SinkWarning)]
    assert len(sink_warnings) == 2  # one per failing call kind (log_scalars, log_event), never repeated
    assert all("ExplodingSink" in m and "disk full" in m for m in sink_warnings)
    assert sum("ExplodingSink" in record.getMessage() for record in caplog.records) == 2
    assert exploding.calls == 2  # each failing kind called once, then skipped
    assert exploding.closed  # its other calls (close) still run
    assert sink.switched_off == [("ExplodingSink", "log_scalars"), ("ExplodingSink", "log_event")]
    assert [r["contrastive/gap"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0.1, 0.2]
    assert [e["kind"] for e in read_jsonl(tmp_path / "events.jsonl")] == ["spike", "spike"]


def test_multisink_strict_reraises(tmp_path):
    sink = MultiSink([ExplodingSink(), JsonlSink(tmp_path)], strict=True)
    with pytest.raises(OSError, match="disk full"):
        sink.log_scalars({"a": 1.0}, step=1)
    assert sink.switched_off == []
    sink.close()


# ---------------------------------------------------------------------------------- TensorBoard


def read_tensorboard(log_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    accumulator = ea.EventAccumulator(
        str(log_dir),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0},
    )
    return accumulator.Reload()


def test_tensorboard_sink_written_files_read_back_with_tensorboard(tmp_path, figure):
    log_dir = tmp_path / "tb"
    sink = TensorBoardSink(log_dir=log_dir)
    for step, gap in [(1, 0.5), (2, 0.25)]:
        sink.log_scalars({"contrastive/gap": gap, "grad_norm/layer.00": 10.0 * step}, step=step)
    sink.log_histogram("contrastive/pos_sim_hist", np.array([0.1, 0.2, 0.9, np.nan]), step=2)
    sink.log_event(ALARM)
    sink.log_figure("geometry/spectrum", figure, step=2)
    sink.log_embeddings("probe", np.eye(3, 4), ["q one", "q\ttwo", "q3"], step=2)
    sink.log_summary({"geometry": {"anisotropy": 0.375}, "model": "minilm"}, step=2)
    sink.close()

    acc = read_tensorboard(log_dir)
    tags = acc.Tags()
    assert [(s.step, s.value) for s in acc.Scalars("contrastive/gap")] == [(1, 0.5), (2, 0.25)]
    assert [(s.step, s.value) for s in acc.Scalars("grad_norm/layer.00")] == [(1, 10.0), (2, 20.0)]
    assert [(s.step, s.value) for s in acc.Scalars("alarm/spike")] == [(2, 1.0)]
    assert [(s.step, s.value) for s in acc.Scalars("geometry/anisotropy")] == [(2, 0.375)]

    (hist,) = acc.Histograms("contrastive/pos_sim_hist")
    assert hist.step == 2
    assert (hist.histogram_value.num, hist.histogram_value.min, hist.histogram_value.max) == (3, 0.1, 0.9)
    assert hist.histogram_value.sum == pytest.approx(1.2)

    (text,) = acc.Tensors("events/text_summary")
    assert text.step == 2
    message = text.tensor_proto.string_val[0].decode()
    assert "spike" in message and "layer.03" in message and "robust z = 9.1" in message

    (image,) = acc.Images("geometry/spectrum")
    assert (image.step, image.width, image.height) == (2, 100, 75)
    assert image.encoded_image_string[:4] == b"\x89PNG"

    assert "custom_scalars__config__" in tags["tensors"]
    assert acc.SummaryMetadata("custom_scalars__config__").plugin_data.plugin_name == "custom_scalars"

    # projector files, as TensorBoard's projector plugin reads them
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "probe:00002"' in config
    (metadata,) = log_dir.glob("00002/probe*/metadata.tsv")
    assert metadata.read_text().splitlines() == ["q one", "q two", "q3"]
    # with texts: two columns under a header, as the projector reads them
    sink = TensorBoardSink(log_dir=tmp_path / "tb2")
    sink.log_embeddings("probe", np.eye(2, 3), ["<b>$$</b>", "dog"], step=4, texts=["a cat\tsat", "a dog\nbarks"])
    sink.close()
    (two_columns,) = (tmp_path / "tb2").glob("00004/probe*/metadata.tsv")
    assert two_columns.read_text().splitlines() == ["text\tlabel", "a cat sat\t<b>$$</b>", "a dog barks\tdog"]
    tensors = np.loadtxt(metadata.parent / "tensors.tsv", delimiter="\t")
    np.testing.assert_array_equal(tensors, np.eye(3, 4))


def latest_layout(log_dir) -> dict[str, list[str]]:
    """The chart title -> tag patterns of the last custom-scalars layout written (the one TensorBoard shows)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = read_tensorboard(log_dir).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(events[-1].tensor_proto.string_val[0])
    return {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}


def test_tensorboard_custom_scalars_one_chart_per_family_from_the_tags_logged(tmp_path):
    layers = [f"grad_norm/layer.{i:02d}" for i in range(3)]
    lora_a = [f"{layer}/lora_A" for layer in layers]
    lora_b = [f"{layer}/lora_B" for layer in layers]
    contrastive = ["contrastive/pos_sim", "contrastive/neg_sim", "contrastive/gap"]
    sink = TensorBoardSink(log_dir=tmp_path)
    step_one = {
        **dict.fromkeys(layers + lora_a + lora_b, 1.0),
        "grad_norm/total": 2.0,
        "grad_norm/embeddings": 0.5,
        **dict.fromkeys(contrastive, 0.3),
        "contrastive/hardest_neg_sim": 0.8,
        "contrastive/in_batch_acc": 0.9,
        "contrastive/loss": 1.2,
        "optim/lr/group.0": 1e-4,
        "optim/lr/group.1": 1e-5,
        "geometry/anisotropy": 0.4,
    }
    sink.log_scalars(step_one, step=1)
    sink.log_event({"step": 3, "kind": "spike", "layer": "layer.01", "message": "", "value": 9.0})
    sink.close()

    charts = latest_layout(tmp_path)
    # every chart lists exactly the tags of its family that were logged, and each listed tag exists
    logged = set(read_tensorboard(tmp_path).Tags()["scalars"])
    members = {
        title: sorted(tag for tag in logged if any(re.search(p, tag) for p in patterns))
        for title, patterns in charts.items()
    }
    assert members == {
        "gradient norm per layer": sorted(layers + ["grad_norm/embeddings"]),
        "gradient norm lora_A": sorted(lora_a),
        "gradient norm lora_B": sorted(lora_b),
        "gradient norm total": ["grad_norm/total"],
        "contrastive similarity: positive, negative, gap": sorted(contrastive),
        "hardest negative similarity": ["contrastive/hardest_neg_sim"],
        "in-batch accuracy": ["contrastive/in_batch_acc"],
        "contrastive loss": ["contrastive/loss"],
        "learning rate": ["optim/lr/group.0", "optim/lr/group.1"],
        "alarms": ["alarm/spike"],
    }
    for title, patterns in charts.items():  # no pattern names a tag that was never logged
        assert all(any(re.search(p, tag) for tag in logged) for p in patterns), title
    assert [title for title, _ in CHART_FAMILIES] == list(charts)


def test_tensorboard_layout_lists_the_lora_tags_a_real_monitor_logs(tmp_path, tiny_mean_model):
    """The LoRA demo's tags come from the monitor on a peft model, not from a list written here."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from aquin_monitor.monitor import StepMonitor

    bert = get_peft_model(
        AutoModel.from_pretrained(tiny_mean_model), LoraConfig(r=2, target_modules=["query", "value"])
    )
    monitor = StepMonitor([TensorBoardSink(log_dir=tmp_path)], histogram_every=0, strict=True, warn=False)
    ids = torch.randint(5, 90, (4, 7))
    for step in (1, 2):
        bert(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        monitor.on_optimizer_step(step, bert)
        bert.zero_grad(set_to_none=True)
    monitor.close()
    logged = set(read_tensorboard(tmp_path).Tags()["scalars"])
    lora_a = {t for t in logged if t.startswith("grad_norm/") and t.endswith("/lora_A")}
    assert lora_a  # the monitor does log them
    charts = latest_layout(tmp_path)
    shown = {tag for tag in logged if any(re.search(p, tag) for p in charts["gradient norm lora_A"])}
    assert shown == lora_a
    shown_b = {tag for tag in logged if any(re.search(p, tag) for p in charts["gradient norm lora_B"])}
    assert shown_b == {t for t in logged if t.startswith("grad_norm/") and t.endswith("/lora_B")} and shown_b


def test_tensorboard_sink_borrowed_writer_is_not_closed(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    sink = TensorBoardSink(writer=writer)
    sink.log_scalars({"a": 1.0}, step=0)
    sink.close()
    writer.add_scalar("b", 2.0, 1)  # still open: the trainer owns it
    writer.close()
    acc = read_tensorboard(tmp_path)
    assert [s.value for s in acc.Scalars("a")] == [1.0] and [s.value for s in acc.Scalars("b")] == [2.0]
    with pytest.raises(ValueError, match="exactly one"):
        TensorBoardSink()
    with pytest.raises(ValueError, match="exactly one"):
        TensorBoardSink(log_dir=tmp_path, writer=writer)


# --------------------------------------------------------------------------------- W&B (offline)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with every directory under tmp_path: no network, no login."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        directory = tmp_path / name.lower()
        directory.mkdir()
        monkeypatch.setenv(name, str(directory))
    yield wandb
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()


def wandb_records(run_dir):
    """Parse a finished run's .wandb file (after ``wandb.teardown()``, which waits for the writer): LevelDB-log blocks
    of 32 KiB, 7-byte record headers (crc32 of type byte + data, length, type FULL/FIRST/MIDDLE/LAST), after a 7-byte
    file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, header, position, pending, records = 32768, 7, 7, b"", []
    while position + header <= len(data):
        if block - position % block < header:  # block trailer too short for a header: zero padding
            position += block - position % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + header])
        payload = data[position + header : position + header + length]
        position += header + length
        if kind == 0 and length == 0:
            continue
        assert checksum == zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + payload)
            records.append(record)
            pending = b""
        else:  # FIRST, MIDDLE
            pending += payload
    return records


def history_rows(records):
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def test_wandb_sink_joins_the_trainer_run_on_its_own_x_axis(wandb_offline, figure):
    wandb = wandb_offline
    # What HF's WandbCallback does in on_train_begin / on_log.
    run = wandb.init(project="hf-project")
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    run.log({"train/loss": 1.5, "train/global_step": 1})

    sink = WandbSink()
    for step, gap in [(1, 0.5), (2, 0.25), (3, float("nan"))]:
        sink.log_scalars({"contrastive/gap": gap, "grad_norm/layer.00": 10.0 * step}, step=step)
    run.log({"train/loss": 1.0, "train/global_step": 3})  # the trainer keeps logging its own way
    sink.log_histogram("contrastive/pos_sim_hist", np.array([0.1, 0.2, 0.9, np.inf]), step=3)
    sink.log_event(ALARM)
    sink.log_figure("geometry/spectrum", figure, step=3)
    sink.log_embeddings("probe", np.arange(6.0).reshape(3, 2), ["a", "b", "c"], step=3)
    sink.log_summary({"geometry": {"anisotropy": 0.375}, "model": "minilm"}, step=3)
    assert sink.run is run
    sink.close()
    assert wandb.run is run  # a borrowed run is not finished by the sink
    run_dir = Path(run.dir).parent
    run.finish()
    wandb.teardown()  # the service writes the .wandb file asynchronously: wait for it to exit

    assert run_dir.name.startswith("offline-run-")
    records = wandb_records(run_dir)
    metrics = {
        m.metric.name: m.metric.step_metric
        for m in records
        if m.WhichOneof("record_type") == "metric" and m.metric.name
    }
    for key in [
        "contrastive/gap",
        "grad_norm/layer.00",
        "contrastive/pos_sim_hist",
        "alarm/spike",
        "events",
        "geometry/spectrum",
        "probe",
        "geometry/anisotropy",
    ]:
        assert metrics[key] == "aquin/step", key

    rows = history_rows(records)
    ours = [row for row in rows if "aquin/step" in row]
    trainer = [row for row in rows if "aquin/step" not in row]
    assert [row["train/global_step"] for row in trainer] == [1, 3]
    scalar_rows = [r for r in ours if not any(key.endswith("/_type") for key in r)]
    assert len(scalar_rows) == 4  # 3 log_scalars + 1 log_summary
    # Not stamped with the trainer's (stale) step. Media rows are: W&B matches their nested
    # keys against the trainer's "*" glob; harmless, they still carry aquin/step.
    assert [r for r in scalar_rows if "train/global_step" in r] == []
    assert [(r["aquin/step"], r["contrastive/gap"], r["grad_norm/layer.00"]) for r in ours[:2]] == [
        (1, 0.5, 10.0),
        (2, 0.25, 20.0),
    ]
    assert ours[2]["aquin/step"] == 3 and np.isnan(ours[2]["contrastive/gap"])  # W&B keeps NaN
    hist = next(r for r in ours if "contrastive/pos_sim_hist/_type" in r)
    assert hist["contrastive/pos_sim_hist/_type"] == "histogram" and sum(hist["contrastive/pos_sim_hist/values"]) == 3
    assert hist["aquin/step"] == 3
    alarm = next(r for r in ours if "alarm/spike" in r)
    assert (alarm["aquin/step"], alarm["alarm/spike"], alarm["events/_type"]) == (2, 1.0, "table-file")
    table = json.loads((run_dir / "files" / alarm["events/path"]).read_text())
    assert table["columns"][:5] == ["step", "kind", "layer", "message", "value"]
    assert table["data"][0][:5] == [2, "spike", "layer.03", "robust z = 9.1", 9.1]
    image = next(r for r in ours if "geometry/spectrum/_type" in r)
    assert image["geometry/spectrum/_type"] == "image-file"
    assert (image["geometry/spectrum/width"], image["geometry/spectrum/height"]) == (100, 75)
    assert (run_dir / "files" / image["geometry/spectrum/path"]).read_bytes()[:4] == b"\x89PNG"
    projection = next(r for r in ours if "probe/_type" in r)
    embedded = json.loads((run_dir / "files" / projection["probe/path"]).read_text())
    assert embedded["columns"] == ["label", "embedding"]
    assert embedded["data"] == [["a", [0.0, 1.0]], ["b", [2.0, 3.0]], ["c", [4.0, 5.0]]]
    summary = next(r for r in ours if "geometry/anisotropy" in r)
    assert (summary["aquin/step"], summary["geometry/anisotropy"]) == (3, 0.375) and "model" not in summary


def test_wandb_sink_of_an_hf_run_shares_the_trainer_axis(wandb_offline, figure, tmp_path):
    """sinks_for_hf's W&B sink logs on HF's train/global_step: the trainer's loss and eval rows and
    ours (scalars, images) at one step each, an image at its snapshot's step, not the trainer's last."""
    from aquin_monitor.sinks.hf import HF_STEP_KEY, sinks_for_hf

    wandb = wandb_offline
    run = wandb.init(project="hf-project")  # what HF's WandbCallback does in on_train_begin / on_log
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    (sink,) = sinks_for_hf(type("Args", (), {"report_to": ["wandb"]})(), tmp_path)
    assert sink.step_key == HF_STEP_KEY == "train/global_step"
    for step in (1, 2):
        sink.log_scalars({"contrastive/gap": 0.5 / step}, step=step)
        run.log({"train/loss": 2.0 / step, "train/global_step": step})
    run.log({"eval/loss": 0.7, "train/global_step": 2})
    sink.log_figure("snapshot/umap", figure, step=2)
    run.log({"train/loss": 0.4, "train/global_step": 5})  # the trainer moves on ...
    sink.log_figure("snapshot/spectrum", figure, step=4)  # ... a figure of an earlier step keeps its step
    with pytest.raises(ValueError, match="reserved"):
        sink.log_scalars({"train/global_step": 3.0}, step=3)
    run_dir = Path(run.dir).parent
    run.finish()
    wandb.teardown()

    records = wandb_records(run_dir)
    axes = {
        m.metric.name: m.metric.step_metric
        for m in records
        if m.WhichOneof("record_type") == "metric" and m.metric.name
    }
    assert axes["contrastive/gap"] == axes["snapshot/umap"] == "train/global_step"
    rows = history_rows(records)
    assert "aquin/step" not in {key for row in rows for key in row}
    at = {}
    for row in rows:
        for key in ("contrastive/gap", "train/loss", "eval/loss", "snapshot/umap/_type", "snapshot/spectrum/_type"):
            if key in row:
                at.setdefault(key, []).append(row["train/global_step"])
    assert at == {
        "contrastive/gap": [1, 2],
        "train/loss": [1, 2, 5],
        "eval/loss": [2],
        "snapshot/umap/_type": [2],
        "snapshot/spectrum/_type": [4],
    }


def test_wandb_sink_opens_and_finishes_its_own_offline_run(wandb_offline, tmp_path):
    wandb = wandb_offline
    assert wandb.run is None
    sink = WandbSink(dir=tmp_path / "own")
    sink.log_scalars({"contrastive/pos_sim": 0.75}, step=4)
    run = sink.run
    assert run.project == "aquin-monitor"
    run_dir = Path(run.dir).parent
    sink.close()
    assert wandb.run is None  # finished: it was ours
    wandb.teardown()
    assert run_dir.parent == tmp_path / "own" / "wandb" and run_dir.name.startswith("offline-run-")
    rows = history_rows(wandb_records(run_dir))
    assert [(r["aquin/step"], r["contrastive/pos_sim"]) for r in rows] == [(4, 0.75)]


def test_wandb_sink_config_and_probe_table_with_texts(wandb_offline, tmp_path):
    sink = WandbSink(dir=tmp_path / "own", config={"monitor/log_every": 1, "monitor/device": np.float32(0.5)})
    sink.update_config({"trainer/learning_rate": 2e-5, "trainer/optimizer": object.__name__})  # before the run exists
    sink.log_embeddings("probe", np.eye(2, 3), ["<script>", "$$"], step=2, texts=["a cat", "a dog"])
    sink.update_config({"trainer/learning_rate": 1e-4})  # after: sent at once, replacing the earlier value
    run_dir = Path(sink.run.dir).parent
    sink.close()
    wandb_offline.teardown()
    records = wandb_records(run_dir)
    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert {
        k: config[k] for k in ("monitor/log_every", "monitor/device", "trainer/learning_rate", "trainer/optimizer")
    } == {"monitor/log_every": 1, "monitor/device": 0.5, "trainer/learning_rate": 1e-4, "trainer/optimizer": "object"}
    (row,) = [r for r in history_rows(records) if "probe/_type" in r]
    table = json.loads((run_dir / "files" / row["probe/path"]).read_text())
    assert table["columns"] == ["text", "label", "embedding"]
    assert table["data"] == [["a cat", "<script>", [1.0, 0.0, 0.0]], ["a dog", "$$", [0.0, 1.0, 0.0]]]


# ------------------------------------------------------------------------ trainer integrations


def test_sinks_for_lightning_maps_each_logger(wandb_offline, tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    tb_logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    csv_logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    tb_sink, csv_sink, wandb_sink = sinks_for_lightning([tb_logger, csv_logger, wandb_logger], tmp_path / "run")

    assert isinstance(tb_sink, TensorBoardSink) and tb_sink.writer is tb_logger.experiment
    assert isinstance(csv_sink, LightningLoggerSink) and csv_sink.logger is csv_logger
    assert isinstance(wandb_sink, WandbSink) and wandb_sink.run is wandb_logger.experiment
    jsonl = JsonlSink(tmp_path / "jsonl")
    assert all(isinstance(sink, Sink) for sink in (tb_sink, csv_sink, wandb_sink, jsonl, MultiSink()))
    jsonl.close()

    multi = MultiSink([tb_sink, csv_sink], strict=True)
    multi.log_scalars({"contrastive/gap": 0.5}, step=3)
    multi.log_event(ALARM)
    multi.log_histogram("h", np.ones(3), step=3)  # no place in a CSV: ignored, not an error
    multi.close()
    tb_logger.finalize("success")
    csv_logger.finalize("success")

    acc = read_tensorboard(tb_logger.log_dir)
    assert [(s.step, s.value) for s in acc.Scalars("contrastive/gap")] == [(3, 0.5)]
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    import csv

    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["step"], row["contrastive/gap"]) for row in rows if row["contrastive/gap"]} == {("3", "0.5")}
    assert {(row["step"], row["alarm/spike"]) for row in rows if row["alarm/spike"]} == {("2", "1.0")}


def test_sinks_for_hf_follows_report_to(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert sinks_for_hf(TrainingArguments(output_dir=str(tmp_path), report_to="none"), tmp_path) == []
    assert sinks_for_hf(SimpleNamespace(report_to=[], output_dir=str(tmp_path)), tmp_path) == []

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=["tensorboard", "wandb", "mlflow"])
    tb_sink, wandb_sink = sinks_for_hf(args, tmp_path / "run")
    assert isinstance(tb_sink, TensorBoardSink) and isinstance(wandb_sink, WandbSink)
    tb_sink.log_scalars({"contrastive/gap": 0.5}, step=1)
    tb_sink.close()
    log_dir = tmp_path / "out" / "runs" / "aquin-monitor"
    assert [s.value for s in read_tensorboard(log_dir).Scalars("contrastive/gap")] == [0.5]

    old_style = SimpleNamespace(report_to="tensorboard", logging_dir=str(tmp_path / "logs"), output_dir=str(tmp_path))
    (sink,) = sinks_for_hf(old_style, tmp_path / "run")
    sink.close()
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_tensorboard_rewind_makes_tensorboard_drop_the_replayed_steps(tmp_path):
    import time

    log_dir = tmp_path / "tb"
    first = TensorBoardSink(log_dir=log_dir)
    for step in range(1, 11):  # the first run got to step 10; its checkpoint was at step 5
        first.log_scalars({"contrastive/gap": float(step)}, step=step)
    first.close()
    time.sleep(1.1)  # event file names carry the second they were opened in; the resumed one sorts after
    resumed = TensorBoardSink(log_dir=log_dir)
    resumed.rewind(5)
    for step in range(6, 9):
        resumed.log_scalars({"contrastive/gap": 100.0 + step}, step=step)
    resumed.close()

    events = read_tensorboard(log_dir).Scalars("contrastive/gap")
    assert [(e.step, e.value) for e in events] == [(s, float(s)) for s in range(1, 6)] + [
        (s, 100.0 + s) for s in range(6, 9)
    ]


def test_jsonl_archive_previous_run_moves_every_artifact_and_loses_nothing(tmp_path):
    old = JsonlSink(tmp_path)
    old.log_scalars({"contrastive/gap": 0.5}, step=1)
    old.log_event({"step": 1, "kind": "spike", "layer": "layer.00", "message": "m", "value": 3.0})
    old.close()
    (tmp_path / "snapshots" / "0").mkdir(parents=True)
    (tmp_path / "snapshots" / "0" / "snapshot.json").write_text("{}")
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "checkpoint-5").mkdir()  # not ours: stays

    sink = JsonlSink(tmp_path)
    with pytest.warns(RuntimeWarning, match="earlier run"):
        target = sink.archive_previous_run()
    sink.log_scalars({"contrastive/gap": 0.7}, step=1)
    sink.close()
    assert target.parent == tmp_path / "previous"
    assert sorted(p.name for p in target.iterdir()) == ["events.jsonl", "metrics.jsonl", "report.html", "snapshots"]
    assert read_jsonl(target / "metrics.jsonl")[0]["contrastive/gap"] == 0.5
    assert [r["contrastive/gap"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0.7]
    assert read_jsonl(tmp_path / "events.jsonl") == [] and (tmp_path / "checkpoint-5").is_dir()
    # a folder with only empty files holds no earlier run
    empty = tmp_path / "fresh"
    assert JsonlSink(empty).archive_previous_run() is None and not (empty / "previous").exists()


def test_jsonl_evaluations_are_rewound_on_resume_and_moved_aside_by_a_fresh_run(tmp_path):
    """evaluations.jsonl (the trainer's own evaluation results) follows the other files: a resumed run drops
    the evaluations after its checkpoint (it replays them), a fresh run moves the file aside with the rest."""
    first = JsonlSink(tmp_path)
    for step in (2, 4, 6):
        first.log_evaluation({"eval_loss": 1.0 / step, "eval_$$<script>": 0.5}, step)
    first.close()
    resumed = JsonlSink(tmp_path)
    resumed.rewind(4)
    resumed.log_evaluation({"eval_loss": 0.1}, 6)
    resumed.close()
    assert [(r["step"], r["eval_loss"]) for r in read_jsonl(tmp_path / "evaluations.jsonl")] == [
        (2, 0.5),
        (4, 0.25),
        (6, 0.1),
    ]
    fresh = JsonlSink(tmp_path)
    with pytest.warns(RuntimeWarning, match="earlier run"):
        target = fresh.archive_previous_run()
    fresh.close()
    assert (target / "evaluations.jsonl").is_file() and not (tmp_path / "evaluations.jsonl").exists()
