# sweeper: `make demo` and `make test` are all a fresh machine needs.
#
# llama-cpp-python is compiled from source. The default flags below build a portable AVX2 CPU
# backend: a -DGGML_NATIVE=ON build picks AMX on some Xeons and segfaults in decode. Override
# for a GPU, e.g.  make install CMAKE_ARGS="-DGGML_CUDA=ON"  (the venv is rebuilt for the new flags).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
STAMP := $(VENV)/.installed
ARGS_STAMP := $(VENV)/.cmake-args

# llama-cpp-python is built from its sdist's source, kept in the venv with its build tree, so
# that llama-server and llama-bench build from the same tree (ggml and llama are compiled once)
# and a second install is incremental. Installing from a local directory also keeps pip's wheel
# cache from reusing a build made with other flags.
LLAMA_CPP_VERSION := 0.3.36
SRC := $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_VERSION)
BUILD := $(VENV)/llama.cpp-build
TOOLS := $(VENV)/lib/llama.cpp-bin
# Always: no downloads at build time, and binaries that find their libraries beside them.
BUILD_ARGS := -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
TOOLS_ON := -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
TOOLS_OFF := -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=ON
JOBS := $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo test lint docs cog bench screenshots clean dist

install: $(STAMP)

# A change of CMAKE_ARGS (a GPU build, say) starts the llama.cpp build tree afresh.
$(ARGS_STAMP): FORCE
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != "$(CMAKE_ARGS)" ]; then \
		if [ -f $@ ]; then echo "CMAKE_ARGS changed: rebuilding llama.cpp"; rm -rf $(BUILD); fi; \
		echo "$(CMAKE_ARGS)" > $@; \
	fi

$(SRC):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	mkdir -p $(VENV)/src
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(VENV)/src llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar xzf $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(VENV)/src

$(STAMP): pyproject.toml $(ARGS_STAMP) | $(SRC)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q cmake ninja
	@echo "Building llama.cpp (llama-cpp-python, llama-server, llama-bench; the first time takes several minutes)..."
	CMAKE_ARGS="$(CMAKE_ARGS) $(BUILD_ARGS)" \
		$(BIN)/pip install -q --force-reinstall --no-deps "$(SRC)" -C build-dir="$(CURDIR)/$(BUILD)"
	$(BIN)/pip install -q -e '.[dev,llamacpp]'
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cmake $(BUILD) $(TOOLS_ON) >/dev/null
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cmake --build $(BUILD) --target llama-server llama-bench -j $(JOBS) >/dev/null
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cmake $(BUILD) $(TOOLS_OFF) >/dev/null
	rm -rf $(TOOLS) && mkdir -p $(TOOLS)
	cp -a $(BUILD)/bin/llama-server $(BUILD)/bin/llama-bench $(BUILD)/bin/*.so* $(TOOLS)/
	ln -sf ../lib/llama.cpp-bin/llama-server $(BIN)/llama-server
	ln -sf ../lib/llama.cpp-bin/llama-bench $(BIN)/llama-bench
	touch $@

FORCE:

demo: install
	$(BIN)/sweeper run studies/demo.toml
	$(BIN)/sweeper pareto studies/demo.toml
	@echo "Report and recommended presets (short and long, every format):"
	$(BIN)/sweeper export studies/demo.toml --all studies/demo-presets --force

# Every test's duration in the log (CI's too): benchmarks/suite_durations.py reads it.
test: install
	$(BIN)/python -m pytest --durations=0

lint: install
	$(BIN)/ruff check sweeper tests benchmarks docs
	$(BIN)/ruff format --check sweeper tests benchmarks docs
	$(BIN)/cog -I docs --check $(PAGES)
	$(BIN)/mypy --platform linux
	$(BIN)/mypy --platform win32
	$(BIN)/mypy --platform darwin

# The README and the docs: every generated part (the CLI's table and help, the settings, the
# failure reasons, the study file's keys, the routes, the module map, every benchmark figure
# from benchmarks/results/) is written by cog; make test checks both (tests/test_docs.py,
# tests/test_readme.py).
PAGES := README.md $(shell find docs -name '*.md' -not -path 'docs/_build/*' | sort)

docs: install
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

cog: install
	$(BIN)/cog -I docs -r $(PAGES)

bench: install
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/noise.py
	$(BIN)/python benchmarks/confirm.py
	$(BIN)/python benchmarks/fidelity.py
	$(BIN)/python benchmarks/fidelity_llama_bench.py
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/service_disturbance.py

# What LM Studio users install: the sdist and, built from it, the wheel (in dist/).
dist: install
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .

# The service's pages for the docs (docs/service-*.png); needs Debian's chromium.
screenshots: install
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) dist build docs/_build studies/*.db studies/*.log studies/*-presets studies/*-report.html
