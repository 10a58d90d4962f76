#!/usr/bin/env python
"""Check that the per-step monitor never synchronises the device (CUDA only).

Runs a few monitored InfoNCE steps of a small BERT under ``torch.cuda.set_sync_debug_mode("warn")``
and prints every synchronising call made inside the monitor's step (the one allowed wait is the event
of the previous step's host copy, which the device has passed long before), histogram steps included.
Exit 1 if any were found.

    python scripts/check_cuda_syncs.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import torch
from transformers import BertConfig, BertModel

from aquin_monitor.losses import info_nce
from aquin_monitor.monitor import StepMonitor
from aquin_monitor.sinks import JsonlSink, MultiSink, TensorBoardSink


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
    ).cuda()
    opt = torch.optim.AdamW(bert.parameters(), lr=1e-5)
    run_dir = tempfile.mkdtemp()
    monitor = StepMonitor(
        [MultiSink([JsonlSink(run_dir), TensorBoardSink(log_dir=run_dir)])], histogram_every=3, warn=False
    )  # steps 3 and 6 copy histogram samples
    found = []
    for step in range(1, 8):
        ids = torch.randint(1000, 20000, (32, 64), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            q = bert(input_ids=ids).last_hidden_state.mean(1)
            d = bert(input_ids=ids.roll(1, 1)).last_hidden_state.mean(1)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = info_nce(q.float(), d.float())
            loss.backward()
            monitor.on_optimizer_step(step, bert)
        torch.cuda.set_sync_debug_mode(0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for w in caught:
            if "synchroniz" in str(w.message).lower():
                found.append((step, str(w.message), w.filename, w.lineno))
    monitor.close()
    for step, message, filename, line in found:
        print(f"step {step}: {message} at {filename}:{line}")
    print(f"{len(found)} synchronising call(s) in 7 monitored steps")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
