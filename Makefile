# edgeface — set-up, demo, tests and benchmarks. Everything runs inside ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
DEMO   := demo

.PHONY: install demo test test-fast bench study gpu-check clean

install: $(STAMP)

# Re-installs only when the package metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on generated data: sample identities -> two-stage training -> evaluation.
# No pretrained weights can be downloaded here, so the backbone starts from random weights
# (the run says so) and the learning rates are raised to learn in a few CPU epochs.
demo: install
	$(BIN)/edgeface sample-data $(DEMO)/data --ids 8 --per-id 16 --val-per-id 4 --size 64 --seed 0 --force
	$(BIN)/edgeface train --train-dir $(DEMO)/data/train --val-dir $(DEMO)/data/val \
		--device cpu --out $(DEMO)/run --force --stage1-epochs 1 --epochs 8 --batch-size 16 \
		--set data.image_size=64 --set optim.warmup_epochs=1 \
		--set optim.head_lr=3e-3 --set optim.backbone_lr=3e-3 --set optim.head_lr_stage2=3e-3 \
		--set arcface.scale=16 --set arcface.margin=0.1
	$(BIN)/edgeface eval --val-dir $(DEMO)/data/val --checkpoint $(DEMO)/run
	@# Deploy: ONNX when the export extra is installed (make install includes it), else safetensors.
	if $(BIN)/python -c "import onnxruntime, onnxscript" 2>/dev/null; then \
		$(BIN)/edgeface export --checkpoint $(DEMO)/run --format onnx --out $(DEMO)/edgeface.onnx --force; \
	else \
		$(BIN)/edgeface export --checkpoint $(DEMO)/run --format safetensors --out $(DEMO)/edgeface.safetensors --force; \
	fi
	$(BIN)/edgeface verify $(DEMO)/data/val/id_000/0000.png $(DEMO)/data/val/id_000/0001.png --checkpoint $(DEMO)/run
	$(BIN)/edgeface enroll $(DEMO)/data/train --checkpoint $(DEMO)/run --out $(DEMO)/gallery.npz --force
	$(BIN)/edgeface identify $(DEMO)/data/val/id_003/0002.png --gallery $(DEMO)/gallery.npz --top-k 3
	@echo "demo run written to $(DEMO)/run (best.pt, last.pt, backbone.pt, metrics.jsonl, metrics.csv, eval.json);"
	@echo "exported model, gallery.npz in $(DEMO)/"

# One pytest worker per core, a test file each (its module fixtures built once), one thread per worker: the
# suite is mostly single-threaded start-ups and subprocesses, so 2 workers take 3 min where one takes 4.5.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile

test: install
	$(PYTEST)

# Everything that needs no training run and no multi-process scenario: under a minute, for development.
test-fast: install
	$(PYTEST) -m "not slow"

# Every figure beside the naive torchvision ImageFolder loop; writes bench.json (about 6 min on 2 cores),
# then the sharded margin head against a replicated one on 2 ranks (bench-sharded-head.json, about 3 min),
# then check-data on 50,000 generated images (bench-check-data.json, about 4 min),
# then face alignment beside the official-style loop (bench-align.json, about 2 min; needs the MTCNN example photos),
# then a stage-2 step with L2-SP or distillation beside a plain one (bench-regularisers.json, about 1 min),
# then exported models beside PyTorch eager and the int8 variants (bench-deploy.json, about 2 min).
bench: install
	$(BIN)/python benchmarks/bench.py
	OMP_NUM_THREADS=1 $(BIN)/python -m torch.distributed.run --standalone --nproc-per-node 2 \
		benchmarks/sharded_head.py --out bench-sharded-head.json
	$(BIN)/python benchmarks/check_data.py --out bench-check-data.json
	$(BIN)/python benchmarks/align.py --out bench-align.json
	$(BIN)/python benchmarks/regularisers.py --out bench-regularisers.json
	$(BIN)/python benchmarks/deploy.py --out bench-deploy.json
	$(BIN)/python benchmarks/int8.py --out bench-int8.json
	$(BIN)/python benchmarks/tflite_int8.py --out bench-tflite-int8.json
	$(BIN)/python benchmarks/recordio.py --out bench-recordio.json
	$(BIN)/python benchmarks/partial_fc.py --out bench-partial-fc.json
	$(BIN)/python benchmarks/augment.py --out bench-augment.json
	$(BIN)/python benchmarks/search.py --sizes 10000 100000 --out bench-search.json
	$(BIN)/python benchmarks/serve_load.py --out bench-serve.json

# The forgetting study (README "Fine-tune without forgetting"): plain fine-tuning, L2-SP, distillation and
# rehearsal side by side at backbone lr 3e-3 and 3e-2, held-out AUC and TAR (about 20 min on 2 cores).
study: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/forgetting.py --out bench-forgetting.json

# On a machine with a CUDA GPU (installs nothing): CUDA tests, bench on the GPU, a 2-epoch CUDA run, deploy,
# alignment and the ONNX file on onnxruntime's CUDA provider -> gpu-check/.
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(DEMO) .pytest_cache gpu-check bench.json bench-sharded-head.json bench-check-data.json bench-align.json bench-regularisers.json bench-deploy.json \
		bench-int8.json bench-recordio.json bench-partial-fc.json bench-augment.json bench-search.json bench-serve.json bench-forgetting.json bench-tflite-int8.json
