# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   set up .venv, make the demo data, train briefly, evaluate
#   make test   set up .venv, run the whole test suite
# (how long each takes depends on the processor: README, What make demo shows; docs/tests.md)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
KERNEL := build/kernels/libssd_cpu_kernels.so
DEMO_DATA ?= demo_data
DEMO_OUT ?= outputs/demo
DEMO_LONG_OUT ?= outputs/demo-long
# Our CPU kernels (and their C++ NMS) are x86-64 code; elsewhere (aarch64) conv_impl auto takes
# MindSpore's own layers and the NMS runs in numpy.
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
KERNEL_TARGET := $(KERNEL)
endif

.PHONY: setup setup-cpp demo demo-long test clean check-aarch64

setup: $(STAMP) $(KERNEL_TARGET)
ifneq ($(ARCH),x86_64)
	@echo "note: $(ARCH): our CPU kernels are x86-64 only; MindSpore's own CPU layers and the numpy NMS run here"
endif

# The C++ inference program needs cmake, g++ and OpenCV's development files (tests build it).
setup-cpp:
	@if ! pkg-config --exists opencv4 2>/dev/null || ! command -v cmake >/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing cmake, g++ and libopencv-dev for ascend310_infer/ ..."; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				cmake g++ make pkg-config libopencv-dev >/dev/null; \
		else \
			echo "ascend310_infer/ needs cmake, g++ and OpenCV (Debian/Ubuntu: sudo apt-get install cmake g++ pkg-config libopencv-dev)" >&2; \
			exit 1; \
		fi; \
	fi

$(STAMP): requirements.txt requirements-engines.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0] + " (set PYTHON=/path/to/python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@if [ "$(ARCH)" = x86_64 ]; then \
		$(PY) -m pip install --quiet -r requirements-engines.txt; \
	elif ! $(PY) -m pip install --quiet -r requirements-engines.txt; then \
		echo "note: the optional engines of requirements-engines.txt (OpenVINO) did not install on $(ARCH) (OpenVINO's arm64 wheel needs glibc >= 2.35); everything else works without them" >&2; \
	fi
	@touch $(STAMP)

# Our CPU kernels (g++; headers from onednn-devel): rebuilt when any source or build.sh changes.
KERNEL_SOURCES := $(wildcard src/kernels/*.cc src/kernels/*.h) src/kernels/build.sh
$(KERNEL): $(KERNEL_SOURCES) $(STAMP)
	PYTHON=$(PY) bash src/kernels/build.sh

demo: setup
	$(PY) -m src.demo_data --out $(DEMO_DATA) --num_train 160 --num_val 40 --seed 0
	$(PY) train.py --config configs/demo.yaml --data_url $(DEMO_DATA) --output_dir $(DEMO_OUT)/train --overwrite true
	$(PY) eval.py --config configs/demo.yaml --data_url $(DEMO_DATA) --output_dir $(DEMO_OUT)/eval \
		--checkpoint_path $$(ls -t $(DEMO_OUT)/train/ssd-*.ckpt | head -n 1)
	$(PY) predict.py --config configs/demo.yaml --output_dir $(DEMO_OUT)/predict --draw_threshold 0.3 \
		--checkpoint_path $$(ls -t $(DEMO_OUT)/train/ssd-*.ckpt | head -n 1) \
		--image $$(ls $(DEMO_DATA)/val2017/*.jpg | head -n 4)
	@echo
	@echo "Demo outputs:"
	@echo "  training:   $(DEMO_OUT)/train/loss_curve.png, train_log.jsonl, checkpoints, config.yaml"
	@echo "  evaluation: $(DEMO_OUT)/eval/pr_curve.png, eval_results.json, detections.json"
	@echo "  pictures:   $(DEMO_OUT)/predict/*.jpg (4 validation images, boxes scored above 0.3)"
	@echo "What the numbers mean: 4 short epochs on 160 images only start the detector (mAP about 0.04,"
	@echo "AP50 about 0.11: many loose, low-scored boxes); make demo-long trains longer and benchmark.py"
	@echo "--mode overfit shows the whole chain fitting 8 images (docs/demo.md)."

demo-long: setup
	$(PY) -m src.demo_data --out $(DEMO_DATA)-long --num_train 480 --num_val 80 --seed 1
	$(PY) train.py --config configs/demo_long.yaml --data_url $(DEMO_DATA)-long --output_dir $(DEMO_LONG_OUT)/train --overwrite true
	$(PY) eval.py --config configs/demo_long.yaml --data_url $(DEMO_DATA)-long --output_dir $(DEMO_LONG_OUT)/eval \
		--checkpoint_path $$(ls -t $(DEMO_LONG_OUT)/train/ssd-*.ckpt | head -n 1)

# arm64 (Debian 12) under qemu emulation: install and every stage (scripts/check_aarch64.sh; root).
check-aarch64:
	bash scripts/check_aarch64.sh

test: setup setup-cpp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	@# One pytest process per test file: MindSpore's process-wide state (compiled graphs, signal
	@# handlers, thread pools) stays within a file; one process for all files ended in a
	@# segmentation fault after ~320 tests (docs/tests.md).
	@failed=""; for file in tests/test_*.py; do \
		$(PY) -m pytest -q -rs -p no:cacheprovider $$file || failed="$$failed $$file"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed:$$failed" >&2; exit 1; fi

# Generated files only (git ignores each of them; tests/test_tree.py checks): the demo data,
# outputs, the kernel and C++ builds, C++ inference results. The .venv stays.
clean:
	rm -rf outputs $(DEMO_DATA) $(DEMO_DATA)-long .pytest_cache build ascend310_infer/build \
		ascend310_infer/out infer_output
