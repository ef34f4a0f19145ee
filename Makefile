# Two commands on a fresh clone: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastblocks-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv install build demo test bench bench-peers auto-table codegen gpu-suite gpu-stack gpu-carry clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(STAMP): $(BIN)/python setup.py pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	FASTBLOCKS_BUILD_CUDA_EMULATION=0 $(BIN)/pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

venv install: $(STAMP)

# The CUDA kernels on the CPU emulator (fastblocks._C_cuda_emulated, the cuda_emulated test backend):
# built alone, in place, when FASTBLOCKS_BUILD_CUDA_EMULATION=1; rebuilt when the CUDA sources change.
EMULATION_STAMP := $(VENV)/.fastblocks-cuda-emulated
EMULATION_SOURCES := $(wildcard csrc/*.cu csrc/*.cuh csrc/*.h csrc/*.inc csrc/emulation/*)
$(EMULATION_STAMP): $(STAMP) setup.py $(EMULATION_SOURCES)
	FASTBLOCKS_BUILD_CPU=0 FASTBLOCKS_BUILD_CUDA=0 FASTBLOCKS_BUILD_CUDA_EMULATION=1 $(BIN)/python setup.py -q build_ext --inplace
	touch $@

# Rebuild the C++/CUDA extension in place (incremental with ninja).
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

demo: $(STAMP)
	$(BIN)/python -m fastblocks.demo

# pytest exit code 5 (no tests collected) must fail loudly, never pass silently.
test: $(STAMP) $(if $(filter-out 0,$(FASTBLOCKS_BUILD_CUDA_EMULATION)),$(EMULATION_STAMP))
	@$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit code 5)" >&2; exit 1; fi; \
	exit $$rc

# CPU benchmark on record (2 threads, channels_last: the targets' setup); writes benchmarks/results/.
BENCH_ARGS ?= --device cpu --quick --channels-last --threads 2
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Inference against ONNX Runtime and OpenVINO (docs/benchmarks.md): 5 models, batch 1 and 8, NCHW and
# channels_last, 2 threads; writes benchmarks/results/<cpu>-<date>-peers.json and .md.
PEERS_ARGS ?= --device cpu --threads 2 --peers
bench-peers: $(STAMP)
	$(BIN)/python -c "import onnxruntime, openvino" 2>/dev/null || $(BIN)/pip install -q onnx onnxruntime openvino
	$(BIN)/python -m benchmarks.run $(PEERS_ARGS)

# Regenerate fastblocks/_auto_table.py (backend="auto" preferences) from benchmarks/results/*.json.
auto-table: $(STAMP)
	$(BIN)/python -m benchmarks.auto_table

# What the Triton kernels compile to for sm_90 (no GPU needed): registers, spills, access widths.
codegen: $(STAMP)
	$(BIN)/python -m benchmarks.triton_codegen --channels-last

# On a GPU machine, with its own python3 (torch + triton installed, no .venv): the GPU test +
# benchmark suite within GPU_BUDGET seconds (benchmarks/gpu/suite.py: compile ahead + Triton GPU
# tests, then the op benchmark alone on the GPU, then the CUDA tests and the model benchmark as time
# allows), loading the Triton kernels `make gpu-carry` compiled ahead of time when they are there.
RESULTS ?= benchmarks/results
GPU_BUDGET ?= 540
gpu-suite:
	$(PYTHON) -m benchmarks.gpu.suite --out $(RESULTS) --budget $(GPU_BUDGET)

# Prepare ahead-of-time compiled Triton kernels for a GPU machine with Python 3.12 / torch 2.11 /
# Triton 3.6, on a machine without a GPU: every Triton kernel the suite loads (benchmark: every
# autotune config; GPU tests: the first) compiled for sm_90 with that stack (Triton's cache keys
# cover libtriton, which differs between Pythons), packed into .gpu-carry/triton-cache.tar.gz
# (git-ignored) for the same path on the GPU machine. The stack is made in $(GPU_STACK) first if
# missing (`make gpu-stack`: a CUDA build of torch, several GB from PyPI).
PY312     ?= python3.12
GPU_STACK ?= /tmp/fastblocks-gpu-stack
GPU_STACK_PY := $(GPU_STACK)/bin/python
CARRY_CACHE ?= /tmp/fastblocks-carry-cache
gpu-stack: $(GPU_STACK_PY)
$(GPU_STACK_PY):
	$(PY312) -m venv $(GPU_STACK)
	$(GPU_STACK_PY) -m pip install -q torch==2.11.0 torchvision==0.26.0 "numpy<2.4" timm tqdm
gpu-carry: $(GPU_STACK_PY)
	rm -rf $(CARRY_CACHE)
	TRITON_CACHE_DIR=$(CARRY_CACHE) $(GPU_STACK_PY) -m benchmarks.gpu.triton_warm --channels-last
	TRITON_CACHE_DIR=$(CARRY_CACHE) FASTBLOCKS_TRITON_CONFIGS=1 $(GPU_STACK_PY) -m benchmarks.gpu.triton_warm --gpu-tests
	$(GPU_STACK_PY) -m benchmarks.gpu.triton_cache pack --cache $(CARRY_CACHE) --out .gpu-carry/triton-cache.tar.gz

clean:
	rm -rf build *.egg-info fastblocks/_C*.so
