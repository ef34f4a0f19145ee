# Two commands on a fresh clone: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastblocks-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv install build demo test bench auto-table codegen gpu-build gpu-test gpu-warm gpu-bench-ops gpu-bench-models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

venv install: $(STAMP)

# Rebuild the C++/CUDA extension in place (incremental with ninja).
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

demo: $(STAMP)
	$(BIN)/python -m fastblocks.demo

# pytest exit code 5 (no tests collected) must fail loudly, never pass silently.
test: $(STAMP)
	@$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit code 5)" >&2; exit 1; fi; \
	exit $$rc

# CPU benchmark on record (2 threads, channels_last: the targets' setup); writes benchmarks/results/.
BENCH_ARGS ?= --device cpu --quick --channels-last --threads 2
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Regenerate fastblocks/_auto_table.py (backend="auto" preferences) from benchmarks/results/*.json.
auto-table: $(STAMP)
	$(BIN)/python -m benchmarks.auto_table

# What the Triton kernels compile to for sm_90 (no GPU needed): registers, spills, access widths.
codegen: $(STAMP)
	$(BIN)/python -m benchmarks.triton_codegen --channels-last

# On a lent GPU machine, with its own python3 (torch + triton installed, no .venv): build the
# extension, run the GPU tests, then the quick benchmark in parts (one 10-minute device call each).
# The Triton cache lives in the (git-ignored) work tree, so a call on the same still-warm machine
# reuses the compiled kernels. RESULTS=$$OUT/results brings the results back.
GPU_ENV := TRITON_CACHE_DIR=$(CURDIR)/.triton-cache
RESULTS ?= benchmarks/results
# A device call is killed at 600 s: the benchmarks skip (and record) what would end after
# GPU_CALL_S from make's start, and write their results after every case.
GPU_CALL_S ?= 540
GPU_DEADLINE := $(shell echo $$(( $$(date +%s) + $(GPU_CALL_S) )))
OPS ?= dwconv_bn_act squeeze_excite activation
gpu-build:
	$(PYTHON) setup.py -q build_ext --inplace

# The tests check results, not speed: one autotune config per kernel specialisation (274 compiles
# for the GPU tests' cases, counted with benchmarks.triton_warm; the kernel families have 3-11
# configs each, so all of them would be over 1000 compiles, one after another). Warmed in
# parallel first; a failure there only costs the warm-up. One process per backend: a kernel fault
# (illegal address) poisons the CUDA context for every later test of its process.
gpu-test: gpu-build
	-$(GPU_ENV) FASTBLOCKS_TRITON_CONFIGS=1 $(PYTHON) -m benchmarks.triton_warm --gpu-tests --deadline +240
	@rc=0; for f in tests/test_triton_gpu.py tests/test_cuda_backend.py; do \
		$(GPU_ENV) FASTBLOCKS_TRITON_CONFIGS=1 $(PYTHON) -m pytest -q -m gpu $$f || rc=1; \
	done; exit $$rc

# Compile every kernel config the op benchmark autotunes, in parallel, into the cache (its
# autotuner would compile them one after another); a failure here only costs the warm-up.
gpu-warm:
	-$(GPU_ENV) $(PYTHON) -m benchmarks.triton_warm --channels-last --ops $(OPS) --deadline +180

# torch.compile of every case and mode dominates the time: all three ops may not fit one call, so
# a session runs OPS=dwconv_bn_act (the targets' op, 16 layers) and OPS="squeeze_excite activation"
# as two calls. Under the deadline a call keeps what it measured and records what it skipped.
gpu-bench-ops: gpu-build gpu-warm
	$(GPU_ENV) $(PYTHON) -m benchmarks.run --device cuda --quick --channels-last --models none \
		--ops $(OPS) --deadline $(GPU_DEADLINE) --out $(RESULTS) --tag "ops $(OPS)"

gpu-bench-models: gpu-build
	$(GPU_ENV) $(PYTHON) -m benchmarks.run --device cuda --quick --channels-last --ops none \
		--deadline $(GPU_DEADLINE) --out $(RESULTS) --tag models

clean:
	rm -rf build *.egg-info fastblocks/_C*.so
