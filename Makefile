# The two commands of the README: `make demo` runs closedloop on the embedded default, `make test` tests it.
# Both install everything first (.ci/setup: uv + the committed lock), so they work on a fresh clone.
.PHONY: setup demo test e2e lint down bench

setup:
	bash .ci/setup

demo: setup
	.venv/bin/closedloop demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

test: lint
	bash .ci/browser
	bash .ci/tools
	.venv/bin/python -m pytest -p no:cacheprovider --durations=25

# only the closed loop as a user runs it, on both profiles, with the UIs in a browser (about 17 minutes; part of `make test` too)
e2e: setup
	bash .ci/browser
	.venv/bin/python -m pytest -p no:cacheprovider -m e2e

down:
	.venv/bin/closedloop down

bench: setup
	.venv/bin/closedloop bench
