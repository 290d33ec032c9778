.PHONY: setup demo demo-quotes quotes-data test test-all bench docs wheel
setup:
	@bash scripts/setup-venv.sh
demo:
	@bash scripts/setup-venv.sh core
	.venv/bin/unmemorize demo --out runs/demo --overwrite
quotes-data:
	@bash scripts/install-quotes-data.sh
demo-quotes: quotes-data
	@bash scripts/setup-venv.sh core
	.venv/bin/unmemorize demo --world quotes --seeds 0,1,2 --out runs/demo-quotes --overwrite
test: setup
	.venv/bin/python -m pytest -q
test-all: setup
	UNMEMORIZE_SLOW=1 .venv/bin/python -m pytest -q
bench: setup
	.venv/bin/python benchmarks/run_all.py
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
wheel: setup
	.venv/bin/python -m build --wheel --outdir dist
