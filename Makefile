# Two commands: `make demo` (set-up, then the main job) and `make test` (set-up, then the tests).
.PHONY: setup demo test lint

setup:
	@bash tools/setup.sh

demo: setup
	.venv/bin/rlprune-edge compress

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --durations=15 tests

lint: setup
	.venv/bin/ruff check .
