# robench: `make demo` trains the default victim and attacks it; `make test` runs the tests.
# Both create .venv and install robench into it on first use (fresh machine: nothing else needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast docs bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev,all,ray,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robench train-defense dataset=mnist model=cw_mnist defense=none
	$(BIN)/robench attack dataset=mnist model=cw_mnist defense=none attack=pgd budget=linf_0.3

# worksteal: tests spread one by one and an idle worker takes queued tests from the other (loadscope kept each
# module on one worker and left one idle at the end: 5:32 against 5:06 for the same tree on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow"

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_oracle.py

clean:
	rm -rf $(VENV) site checkpoints results/attack results/train results/multirun
