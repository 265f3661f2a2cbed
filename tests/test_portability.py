"""Where LM Studio users are: sweeper starts without the POSIX-only modules (as on Windows),
without llama-cpp-python (an LM Studio install), and writes to pipes on Windows code pages.
CI runs Linux: these run sweeper in subprocesses with those modules made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweeper.backends import EXTRA_BACKENDS

SWEEPER = str(Path(sys.executable).parent / "sweeper")
STUDY = """
name = "port"
backend = "fake"
model = "fake-model"
[budget]
trials = 2
[measure]
repeats = 1
warmup = 0
[space]
cpu_threads = [1, 2]
[[workloads]]
name = "{workload}"
prompt = "日本語で答えてください"
max_tokens = 8
"""


def without(modules: set[str], tmp_path: Path) -> dict[str, str]:
    """An environment in which every Python process (workers too) cannot import ``modules``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys
        class _Unavailable:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ImportError(f"No module named {{name!r}} (not on this platform)")
        sys.meta_path.insert(0, _Unavailable())
        """)
    )
    return {
        "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parent)]),  # the fake's
        EXTRA_BACKENDS: os.environ[EXTRA_BACKENDS],
        "PATH": str(Path(sys.executable).parent),
        # its own lock and queue: a lock file another lock flavour left in ~/.sweeper would hold
        # filelock's soft fallback (no fcntl, no msvcrt) for ever
        "SWEEPER_HOME": str(tmp_path / "sweeper-home"),
    }


def sweeper(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWEEPER, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


def test_sweeper_runs_without_the_posix_only_modules(tmp_path: Path) -> None:
    env = without({"resource", "fcntl", "termios"}, tmp_path)
    check = subprocess.run(
        [sys.executable, "-c", "import resource"], env=env, capture_output=True, text=True
    )
    assert "not on this platform" in check.stderr  # the modules really are unavailable
    assert sweeper(env, "--help").returncode == 0
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(workload="short"), encoding="utf-8")
    result = sweeper(env, "run", study)
    assert result.returncode == 0, result.stderr
    # the baseline in full, one configuration screened, then promoted and measured in full
    assert result.stdout.startswith(
        "ran 3 trials; 3 trials, 3 complete, 3 feasible (1 screened, 2 measured in full)"
    )


def test_sweeper_runs_without_llama_cpp(tmp_path: Path, model_path: str) -> None:
    env = without({"llama_cpp"}, tmp_path)
    assert sweeper(env, "--help").returncode == 0
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(workload="short"), encoding="utf-8")
    assert sweeper(env, "run", study).returncode == 0
    # the LM Studio backend reads a GGUF's layer count without llama.cpp
    layers = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sweeper.backends import lmstudio; "
            f"print(lmstudio._layers_from_gguf({model_path!r}))",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert layers.stdout.strip() == "18", layers.stderr
    llama = tmp_path / "llama.toml"
    llama.write_text(
        STUDY.format(workload="short").replace('"fake"', '"llama.cpp"', 1), encoding="utf-8"
    )
    refused = sweeper(env, "run", llama)
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: llama-cpp-python is not installed; run `make install` in the checkout (it "
        "compiles llama.cpp: a C/C++ compiler and CMake, minutes the first time)\n"
    )


@pytest.mark.parametrize("encoding", ["cp1252", "cp932"])
def test_output_through_a_pipe_on_windows_code_pages(tmp_path: Path, encoding: str) -> None:
    """A pipe or a file is not UTF-8 on Windows (the console is): every command still works,
    and what the code page cannot show becomes "?"."""
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(workload="短い"), encoding="utf-8")
    env = {"PYTHONIOENCODING": encoding, "PATH": str(Path(sys.executable).parent)}
    env |= {"PYTHONPATH": str(Path(__file__).parent), EXTRA_BACKENDS: os.environ[EXTRA_BACKENDS]}

    def run(*args: object) -> str:
        result = subprocess.run(
            [SWEEPER, *map(str, args)], env=env, capture_output=True, timeout=300
        )
        assert result.returncode == 0, result.stderr.decode(encoding, "replace")
        return result.stdout.decode(encoding)  # strict: what was written is that code page

    run("run", study, "--no-confirm")  # the confirmation's output is the confirm command's
    for out in (run("pareto", study), run("status", study), run("confirm", study, "--rounds", 3)):
        name = "短い" if encoding == "cp932" else "??"
        assert f"{name}: " in out
