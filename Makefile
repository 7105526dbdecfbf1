# Quickstart: `make test` and `make demo`. Each creates .venv and installs everything on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= python3.12
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export PYENV_VERSION ?= 3.12
DEMO_DIR := outputs/demo
# make results' runs (conf/experiment/results.yaml: run_dir), which the benchmarks of the learned policy read
RESULTS_DIR := outputs/results

.PHONY: install system-deps test test-all demo results data-efficiency experiment metaworld lint bench-sim bench-lam bench-policy bench-control bench-gpu bench-train-cpu bench-neural-sim bench-ceiling datasets clean

# Offscreen rendering needs EGL and Mesa; install them only when missing (root, Debian).
system-deps:
	@if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libGL.so.1'; then \
	  echo "installing EGL/Mesa for offscreen MuJoCo rendering"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libgl1-mesa-dri >/dev/null; \
	fi

$(STAMP): pyproject.toml policies/plugin/pyproject.toml sim/plugin/pyproject.toml
	$(MAKE) system-deps
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	@# (the local wheel mirrors make pip warn about every package they lack: hide that noise)
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
	@# the LeRobot plugin distributions (lerobot-train --policy.type=vipra, lerobot-eval --env.type=tabletop)
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps -e policies/plugin -e sim/plugin 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
	touch $(STAMP)

install: $(STAMP)

# Fast CPU suite (slow tests are marked and skipped); exits non-zero on any failure.
test: install
	$(PYTHON) -m pytest -q -m "not slow" --durations=15

test-all: install
	$(PYTHON) -m pytest -q

# make results' recipe shrunk (14.0 min at d159d72): datasets -> backbone pretrained on the actionless video -> ours and
# Scratch-FM -> visual matching, the table printed (conf/experiment/demo.yaml). Starts from a clean $(DEMO_DIR).
demo: install
	rm -rf $(DEMO_DIR)
	$(PYTHON) -m policies.pipeline experiment=demo

# The headline table (conf/experiment/results.yaml; 210.4 min at 9915154 on a slow day, 117 at 167c01a
# before co-training): datasets, the backbone pretrained on the actionless video, ours (co-trained on the video) and
# Scratch-FM with 3 seeds each, state_fm, LeRobot's ACT, the expert and random (1 Euler step for the flow ones), 50
# episodes per task and protocol -> reports/experiment/results.{json,md,png}. Resumes from outputs/results
# (delete it to start over); the wall time of every segment is summed in the table.
results: install
	$(PYTHON) -m policies.pipeline experiment=results

# What video buys in demos (conf/experiment/data_efficiency.yaml, 80 min here after make results): ours and
# Scratch-FM on 10, 25, 50, 100, 200 demos, visual matching -> reports/experiment/data_efficiency.{json,png}.
# Shares outputs/results with make results (its backbone and 200-demo runs); resumes.
data-efficiency: install
	$(PYTHON) -m policies.data_efficiency experiment=data_efficiency

# The ablations (conf/experiment/full.yaml): the backbone without its change map or its future frame, on one
# embodiment's video, with latent actions; 50 episodes per task and protocol -> reports/experiment/ablations/.
# Resumes from the runs in outputs/experiment.
experiment: install
	$(PYTHON) -m policies.pipeline experiment=full

# Meta-World MT10 with 5 demos per task, ours vs Scratch-FM (conf/experiment/metaworld.yaml, ~30 min):
# reports/metaworld/. Starts from a clean outputs/metaworld.
metaworld: install
	rm -rf outputs/metaworld
	$(PYTHON) -m policies.pipeline experiment=metaworld

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Rendering and physics throughput, expert and random success: writes reports/bench/sim.json.
bench-sim: install
	$(PYTHON) -m bench.sim

# The suite's ceiling (~30 min): the default demos -> state_fm (privileged state, the same decoder and
# trainer as ours) -> state_fm chunked and closed-loop, the expert and random, 50 episodes per task and
# protocol; stored frames vs fresh renders: reports/bench/ceiling.json and reports/figures/ceiling.png.
# Starts from a clean outputs/bench/ceiling: demos and a run of older code must not be reused.
bench-ceiling: install
	rm -rf outputs/bench/ceiling
	$(PYTHON) -m bench.ceiling experiment=ceiling

# The default datasets (python -m data.generate, ~4 min), generated once.
DATASETS := outputs/datasets
$(DATASETS)/video/meta/info.json: | install
	$(PYTHON) -m data.generate data.root=$(DATASETS)
datasets: $(DATASETS)/video/meta/info.json

# Latent action model: trains the CPU profile from scratch (~20 min) and scores it: writes
# reports/bench/lam.json and reports/figures/lam_grid.png.
bench-lam: install datasets
	$(PYTHON) -m bench.lam data.root=$(DATASETS)

# Policy latency (chunk and full step, batch 1, this CPU), the sampler gap and success of make results' ours
# (seed 0) with 10 Euler steps vs 1 (the mean chunk, make results' sampler) on the same scenes, ~7 min after
# make results -> reports/bench/policy.json. The shortcut mode (a second training stage) is
# bench_policy.few_step.method=shortcut on a checkpoint that trained it (README, Benchmarks).
bench-policy: install
	$(PYTHON) -m bench.policy experiment=results

# The real-time loop at 20 and 50 Hz on the MuJoCo robot with make results' ours, decoded as make results
# does (one Euler step; 29 min of real-time episodes at d159d72): reports/bench/control.json, reports/figures/control.png.
bench-control: install
	$(PYTHON) -m bench.control experiment=results

# The neural simulator against MuJoCo (generates its rollouts, with make results' and make
# data-efficiency's checkpoints among their controllers, and trains it when missing, ~65 min): agreement
# over 12 policies (6 trained checkpoints), PSNR/SSIM by horizon, throughput -> reports/bench/neural_sim.json;
# then its controls (state_fm, which reads no frame, and two checkpoints it was trained on, ~3 min):
# reports/bench/neural_sim_controls.json; then every policy's MuJoCo episodes replayed in its state model
# with their own actions (~3 min), splitting each gap between the state model and the closed loop:
# reports/bench/neural_sim_replay.json.
bench-neural-sim: install
	$(PYTHON) -m bench.neural_sim run_dir=$(RESULTS_DIR)
	$(PYTHON) -m bench.neural_sim_controls run_dir=$(RESULTS_DIR)
	$(PYTHON) -m bench.neural_sim_replay run_dir=$(RESULTS_DIR)

# Training samples/s and MFU of the GPU profiles (128x128), fp32/bf16, eager/compiled: reports/bench/train_cuda.json.
# Prints why and exits 0 where no GPU is visible.
bench-gpu: install
	$(PYTHON) -m bench.train experiment=full_gpu bench_train.device=cuda

# The same for the CPU profiles on this machine (fp32, eager): reports/bench/train_cpu.json.
bench-train-cpu: install
	$(PYTHON) -m bench.train bench_train.device=cpu 'bench_train.precisions=[fp32]' 'bench_train.compile=[false]'

clean:
	rm -rf outputs .pytest_cache .ruff_cache
