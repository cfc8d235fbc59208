# The README's two commands: `make demo` (install + the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean

install: $(VENV)/.installed

# requirements/constraints.txt pins every dependency to the versions the demo and the results were
# measured with (the package itself asks for ranges); `make constraints` rewrites it from a fresh .venv.
$(VENV)/.installed: setup.py requirements/torch-cpu.txt requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/torch-cpu.txt -c requirements/constraints.txt
	$(PY) -m pip install -q -e '.[dev]' -c requirements/constraints.txt
	touch $@

.PHONY: constraints
constraints: install
	{ sed -n '/^#/p' requirements/constraints.txt; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

demo: install
	$(PY) -m prn_edge.demo

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

# prn-serve's server (tests/test_serve.py; best effort in .ci/run): PyTriton's backend stub links against
# the system's libpython, so this venv is made by the distribution's own Python, never by $(PYTHON) if
# that is another build (pyenv, conda). ~20 s and ~600 MB (tritonserver, ONNX Runtime, OpenCV, numpy).
SYSTEM_PYTHON ?= /usr/bin/python3
SERVE_VENV ?= .venv-serve

.PHONY: serve-env
serve-env: $(SERVE_VENV)/.installed

$(SERVE_VENV)/.installed: setup.py
	$(SYSTEM_PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q -e '.[serve]'
	touch $@

# --------------------------------------------------------------------------------------
# Committed results under benchmarks/results/: one target each, regenerated from a fresh clone.
# Inputs are arguments, never paths one script assumes of another: where one result needs
# another's output (export needs the accuracy run's bottle checkpoint, bench needs the export),
# the dependency is a make prerequisite. Runs go to $(RUNS) (git-ignored); delete it to redo them.
# Times are for 2 CPU cores (benchmarks/README.md).
# --------------------------------------------------------------------------------------
DATA_ROOT ?= ../shared/data
RUNS ?= runs
RESULTS ?= benchmarks/results
THREADS ?= 2
BOTTLE_CKPT := $(RUNS)/accuracy/bottle-edge/checkpoint.pt
TILE_CKPT := $(RUNS)/accuracy/tile-edge/checkpoint.pt
DEMO_CKPT := $(RUNS)/demo/train/checkpoint.pt
BOTTLE_EXPORT := $(RUNS)/export/bottle-edge
EXPORT_CMD = $(PY) benchmarks/export.py --checkpoint $(BOTTLE_CKPT) --data $(DATA_ROOT)/mvtec_ad/bottle \
	--out $(BOTTLE_EXPORT) --results $(RESULTS) --threads $(THREADS) --latency-rounds 30

.PHONY: results results-model-size results-accuracy results-export results-bench results-kernels \
	results-emulator-mutations results-runtime-gpu results-reliability results-int8-calibration \
	results-prototype-diagnosis results-match-ablation results-match-ablation-20min results-serving \
	results-cpu-profile results-map-smoothing results-cpu results-decoder-map-weight \
	results-decoder-map-weight-trained results-score-prior-share

# The CPU results (results-runtime-gpu needs a CUDA GPU, results-kernels nvcc).
results: results-model-size results-accuracy results-export results-bench results-reliability

results-model-size: install                     # model_size.{md,json}; ~30 s, no data
	$(PY) benchmarks/model_size.py --k 21 --out $(RESULTS)

# The bottle-edge run alone (~20 min): what export and bench start from.
$(BOTTLE_CKPT): | install
	$(PY) benchmarks/accuracy.py train --only bottle-edge --threads $(THREADS) --data-root $(DATA_ROOT) \
		--runs $(RUNS)/accuracy

# The measured defaults' rows are read from the results above (results-decoder-map-weight-trained and
# -decoder-map-weight, -match-ablation-20min); the paper-era runs are trained here. `accuracy.py report` alone
# rebuilds accuracy.md from the committed results (paper-era rows kept from the earlier accuracy.json).
results-accuracy: $(BOTTLE_CKPT) install        # accuracy.{md,json}, accuracy_curves.png; ~2 h
	$(PY) benchmarks/accuracy.py train --threads $(THREADS) --data-root $(DATA_ROOT) --runs $(RUNS)/accuracy
	$(PY) benchmarks/accuracy.py eval --data-root $(DATA_ROOT) --runs $(RUNS)/accuracy
	$(PY) benchmarks/accuracy.py report --runs $(RUNS)/accuracy --results $(RESULTS)

# The bottle export (model folder + export.{md,json}); ~4 min after the checkpoint.
$(BOTTLE_EXPORT)/export_report.json: $(BOTTLE_CKPT) | install
	$(EXPORT_CMD)

results-export: $(BOTTLE_CKPT) install          # export.{md,json}
	$(EXPORT_CMD)

results-bench: $(BOTTLE_EXPORT)/export_report.json install   # bench_bottle.{json,md,png}; ~3 min
	$(VENV)/bin/prn-bench --model $(BOTTLE_EXPORT) --checkpoint $(BOTTLE_CKPT) --batch 1,8 --duration 30 \
		--threads $(THREADS) --precisions fp32,fp16,int8 --json $(RESULTS)/bench_bottle.json \
		--md $(RESULTS)/bench_bottle.md --plot $(RESULTS)/bench_bottle.png

# The tile-edge run alone (~7 min) and the demo model (data + 60 steps, ~4 min): int8-calibration's inputs.
$(TILE_CKPT): | install
	$(PY) benchmarks/accuracy.py train --only tile-edge --threads $(THREADS) --data-root $(DATA_ROOT) \
		--runs $(RUNS)/accuracy

$(DEMO_CKPT): | install
	$(PY) -m prn_edge.demo --root $(RUNS)/demo --threads $(THREADS) --skip eval,export,inspect,bench

# MinMax vs percentile vs entropy INT8 ranges on three trained models. It needs three checkpoints and
# makes the missing ones first: the accuracy run's bottle-edge (~20 min) and tile-edge (~7 min) and the
# demo model (~4 min); then ~2.5 h (per-model measurements kept in $(RUNS)/int8-calibration).
# The committed result was measured on 10-minute bottle and tile checkpoints (its "this run" line), so
# these checkpoints reproduce its method, not its exact numbers.
results-int8-calibration: $(DEMO_CKPT) $(BOTTLE_CKPT) $(TILE_CKPT) install   # int8_calibration.{md,json}
	$(PY) benchmarks/int8_calibration.py --model demo $(DEMO_CKPT) $(RUNS)/demo/data/demo_brick \
		--model bottle $(BOTTLE_CKPT) $(DATA_ROOT)/mvtec_ad/bottle \
		--model magnetic-tile $(TILE_CKPT) $(DATA_ROOT)/magnetic_tile \
		--threads $(THREADS) --work $(RUNS)/int8-calibration --out $(RESULTS)

# Issue 13: variation sets (shifted, rotated, rescaled, darker copies of bottle; git-ignored) and the
# demo's bricks, then the residuals' evidence before training and the trained match/prior ablation.
VARIATIONS := $(RUNS)/variations
DEMO_DATA := $(RUNS)/demo_data/demo_brick
$(VARIATIONS)/bottle-unaligned: | install
	$(PY) benchmarks/variations.py --data $(DATA_ROOT)/mvtec_ad/bottle --out $(VARIATIONS)

$(DEMO_DATA): | install
	$(PY) -c "from prn_edge.demo.data import build_demo_dataset; build_demo_dataset('$(RUNS)/demo_data')"

ISSUE13_SETS = $(DATA_ROOT)/magnetic_tile $(VARIATIONS)/bottle-unaligned $(DEMO_DATA) \
	$(DATA_ROOT)/mvtec_ad/bottle $(VARIATIONS)/bottle-darker

results-prototype-diagnosis: $(VARIATIONS)/bottle-unaligned $(DEMO_DATA) install   # ~40 min
	$(PY) benchmarks/prototype_diagnosis.py --variants image,patch,patch+pool3-inside,patch+pool3,patch+pool3+s23 --reuse --threads $(THREADS) \
		--data $(ISSUE13_SETS) --results $(RESULTS)

results-match-ablation: $(VARIATIONS)/bottle-unaligned $(DEMO_DATA) install        # ~15 min per run
	$(PY) benchmarks/match_ablation.py --steps 120 --threads $(THREADS) --variants image,patch+prior,patch+prior+pool3-inside,patch+prior+pool3+s23 \
		--data $(DATA_ROOT)/magnetic_tile $(VARIATIONS)/bottle-unaligned --runs $(RUNS)/match_ablation \
		--results $(RESULTS)

# The issue's budget: 20 minutes per run on 2 cores, two seeds; ~25 min per run with its evaluation.
results-match-ablation-20min: $(VARIATIONS)/bottle-unaligned $(DEMO_DATA) install
	$(PY) benchmarks/match_ablation.py --minutes 20 --seed 0,1 --threads $(THREADS) --name match_ablation_20min \
		--variants patch+prior+pool3+s23,patch+prior+pool3+s23+cosine+select,patch+prior+pool3+s23+cosine+select+builtin,patch+prior+pool3+s23+cosine+select+builtin+lr2e-5,measured,measured+separable \
		--data $(ISSUE13_SETS) --runs $(RUNS)/match_ablation --results $(RESULTS) --reuse

# The anomaly map's Gaussian blur at sigma 0-8 on those 20-minute checkpoints (no training; ~3 min per set).
results-map-smoothing: install
	$(PY) benchmarks/map_smoothing.py --data $(ISSUE13_SETS) --threads $(THREADS) \
		--variants patch+prior+pool3+s23+cosine+select+builtin,patch+prior+pool3+s23+cosine+select+builtin+lr2e-5 \
		--runs $(RUNS)/match_ablation --results $(RESULTS)

# Issue 13: the decoder's weight in the map, on the 20-minute checkpoints of results-match-ablation-20min
# (seed 0 and, where trained, seed 1); one pass per checkpoint, ~20 min.
results-decoder-map-weight: install
	$(PY) benchmarks/decoder_map_weight.py --data $(ISSUE13_SETS) $(VARIATIONS)/bottle-rotated --threads $(THREADS) \
		--runs $(RUNS)/match_ablation --results $(RESULTS) \
		--ablation $(RESULTS)/match_ablation_20min.json $(RESULTS)/decoder_map_weight_trained.json

# ...and runs trained with it (the measured defaults): seed 0 on the bricks, where it mattered most, and on
# bottle-rotated and bottle-shifted, sets that W was not chosen on; seed 1 on the variation sets. Cells already in the results
# are kept (--reuse); ~25 min per missing run. Run it before results-decoder-map-weight (its PatchCore cells).
results-decoder-map-weight-trained: $(VARIATIONS)/bottle-unaligned $(DEMO_DATA) install   # makes bottle-rotated too
	$(PY) benchmarks/match_ablation.py --minutes 20 --seed 0 --variants measured --name decoder_map_weight_trained \
		--data $(DEMO_DATA) $(VARIATIONS)/bottle-rotated $(VARIATIONS)/bottle-shifted --threads $(THREADS) \
		--runs $(RUNS)/match_ablation --results $(RESULTS) --reuse
	$(PY) benchmarks/match_ablation.py --minutes 20 --seed 1 --variants measured --name decoder_map_weight_trained \
		--data $(DEMO_DATA) $(VARIATIONS)/bottle-unaligned $(VARIATIONS)/bottle-darker $(VARIATIONS)/bottle-rotated \
		--threads $(THREADS) --runs $(RUNS)/match_ablation --results $(RESULTS) --reuse

# The residual prior's share of the image score (score_prior_share.{md,json}), re-scored post hoc from the
# measured defaults' 20-minute checkpoints on disk (results-decoder-map-weight-trained); ~1 min per checkpoint.
results-score-prior-share: $(VARIATIONS)/bottle-unaligned $(DEMO_DATA) install
	$(PY) benchmarks/score_prior_share.py --data $(ISSUE13_SETS) $(VARIATIONS)/bottle-rotated $(VARIATIONS)/bottle-shifted \
		$(VARIATIONS)/bottle-scaled --threads $(THREADS) --runs $(RUNS)/match_ablation --results $(RESULTS) \
		--ablation $(RESULTS)/match_ablation_20min.json $(RESULTS)/decoder_map_weight_trained.json

# Issue 16: CPU time per part of the network and the INT8 forms, on the 20-minute bottle model of
# results-match-ablation-20min (its candidate defaults); ~8 min.
CPU_PROFILE_CKPT := $(RUNS)/match_ablation/bottle-patch+prior+pool3+s23+cosine+select+builtin-s0-m20/checkpoint.pt
results-cpu-profile: install
	$(PY) benchmarks/cpu_profile.py --checkpoint "$(CPU_PROFILE_CKPT)" --threads $(THREADS) --results $(RESULTS)

# Issue 16, item 5: the CPU deployment end to end (prn-export --cpu-int8, then prn-bench's CPU rows with a
# profile) for the 20-minute bottle models of results-match-ablation-20min with the measured defaults, with
# the paper's conv3x3 MSA blocks (seed 1) and with separable ones (seed 0: the seeds that were run); ~30 min.
CPU_MODELS := conv3x3=$(RUNS)/match_ablation/bottle-measured-s1-m20/checkpoint.pt \
	separable=$(RUNS)/match_ablation/bottle-measured+separable-s0-m20/checkpoint.pt
results-cpu: install
	$(PY) benchmarks/cpu.py $(foreach m,$(CPU_MODELS),--model "$(m)") --threads $(THREADS) --runs $(RUNS)/cpu \
		--results $(RESULTS)

# Issue 15: many cameras, one Triton server. The demo's model (~3 min to train), exported in FP32 (~1 min),
# served by prn-serve from the serving environment; then ~8 min of interleaved runs.
SERVING_MODEL := $(RUNS)/serving/model
$(SERVING_MODEL)/manifest.json: $(DEMO_CKPT) | install
	$(VENV)/bin/prn-export $(DEMO_CKPT) --out $(SERVING_MODEL) --threads $(THREADS) --no-progress

results-serving: $(SERVING_MODEL)/manifest.json serve-env install      # serving.{md,json}
	$(PY) benchmarks/serving.py --model $(SERVING_MODEL) --frames $(DATA_ROOT)/mvtec_ad/bottle/test \
		--threads $(THREADS) --serve-python $(SERVE_VENV)/bin/python --out $(RESULTS)

results-reliability: install                    # reliability.md; ~7 min: the chaos suite, kills included
	$(PY) benchmarks/reliability.py --out $(RESULTS)/reliability.md

results-kernels: install                        # kernels.md; ~80 s, needs nvcc (no GPU)
	$(PY) benchmarks/kernel_resources.py --out $(RESULTS)/kernels.md

results-emulator-mutations: install             # emulator_mutations.md; ~12 min (CPU CUDA emulator)
	$(PY) benchmarks/emulator_mutations.py

results-runtime-gpu: install                    # runtime_gpu.json; ~1 min on a CUDA GPU with CuPy
	PYTHONPATH=. $(PY) benchmarks/runtime_gpu_check.py --out $(RESULTS)/runtime_gpu.json
