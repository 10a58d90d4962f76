.PHONY: setup demo lint test bench
PY := .venv/bin/python

setup:
	bash scripts/setup.sh

# The main job: an InfoNCE LoRA fine-tune of the bundled all-MiniLM-L6-v2 on SciFact, monitored.
demo: setup
	HF_HUB_OFFLINE=1 $(PY) recipes/infonce.py

# The rules held by tools: ruff (imports, unused names, bugbear, line length) and mypy on the package.
lint:
	.venv/bin/ruff check aquin_monitor tests scripts recipes
	.venv/bin/ruff format --check aquin_monitor tests scripts recipes
	.venv/bin/mypy

# The whole test suite (CI runs this): lint first, for a fast failure.
test: setup
	$(MAKE) lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_step_monitor.py
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_signals.py
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_snapshot.py
