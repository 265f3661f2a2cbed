# sweeper: `make demo` and `make test` are all a fresh machine needs.
#
# llama-cpp-python is compiled from source. The default flags below build a portable AVX2 CPU
# backend: a -DGGML_NATIVE=ON build picks AMX on some Xeons and segfaults in decode. Override
# for a GPU, e.g.  make install CMAKE_ARGS="-DGGML_CUDA=ON"  (the venv is rebuilt for the new flags).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
export CMAKE_ARGS
STAMP := $(VENV)/.installed
ARGS_STAMP := $(VENV)/.cmake-args

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Rebuild llama-cpp-python when CMAKE_ARGS change: pip's wheel cache does not know about them.
$(ARGS_STAMP): FORCE
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != "$(CMAKE_ARGS)" ]; then \
		if [ -f $@ ]; then \
			echo "CMAKE_ARGS changed: rebuilding llama-cpp-python"; \
			$(BIN)/pip install -q --no-cache-dir --force-reinstall --no-deps llama-cpp-python; \
		fi; \
		echo "$(CMAKE_ARGS)" > $@; \
	fi

$(STAMP): pyproject.toml $(ARGS_STAMP)
	$(BIN)/pip install -q --upgrade pip
	@echo "Installing sweeper and its dependencies (the first llama-cpp-python build takes a few minutes)..."
	$(BIN)/pip install -q -e '.[dev,llamacpp]'
	touch $@

FORCE:

demo: install
	$(BIN)/sweeper run studies/demo.toml
	$(BIN)/sweeper pareto studies/demo.toml
	@echo "Report and recommended presets (short and long, every format):"
	$(BIN)/sweeper export studies/demo.toml --all studies/demo-presets --force

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check sweeper tests benchmarks
	$(BIN)/ruff format --check sweeper tests benchmarks
	$(BIN)/mypy --platform linux
	$(BIN)/mypy --platform win32
	$(BIN)/mypy --platform darwin

bench: install
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/noise.py
	$(BIN)/python benchmarks/confirm.py

clean:
	rm -rf $(VENV) studies/*.db studies/*.log studies/*-presets studies/*-report.html
