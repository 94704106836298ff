# edgeface — set-up, demo, tests and benchmarks. Everything runs inside ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
DEMO   := demo

.PHONY: install demo test bench clean

install: $(STAMP)

# Re-installs only when the package metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	mkdir -p $(DEMO)
	$(BIN)/python -c "import torch; from edgeface_cli.models import EdgeFace; torch.save(EdgeFace('edgeface_xxs').state_dict(), '$(DEMO)/edgeface_xxs.pt')"
	$(BIN)/edgeface inspect-keys --edgeface $(DEMO)/edgeface_xxs.pt
	-$(BIN)/edgeface inspect-keys --edgeface $(DEMO)/edgeface_xxs.pt --set 'model.use_pos_emb=[false,true,true,true]'

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m edgeface_cli.bench

clean:
	rm -rf $(DEMO) .pytest_cache
