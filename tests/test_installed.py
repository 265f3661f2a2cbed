"""What LM Studio users install: the wheel `make dist` builds (through the sdist), installed
not editable into a venv outside the checkout, run from another folder. Its dependencies come
from the dev venv through a .pth file (no downloads); sweeper itself must be the installed copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import replaced, tiny_probes
from lmstudio_server import LMStudioTestServer, ServerModel

ROOT = Path(__file__).parent.parent
KEY = "google/gemma-3-270m"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of what the repository tracks for it: a checkout's own build files
    (the editable install's egg-info) would let a file missing from the rules slip in."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    shutil.copytree(ROOT / "sweeper", source / "sweeper", ignore=shutil.ignore_patterns("__py*"))
    shutil.copytree(
        ROOT / "studies",
        source / "studies",
        ignore=lambda _, names: [n for n in names if not n.endswith(".toml")],
    )
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = dist.glob("loadsweeper-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin (Scripts on Windows) folder."""
    root = tmp_path_factory.mktemp("users-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python.parent


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder with nothing of the checkout in it, where the user runs sweeper."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_wheel_holds_every_module_template_and_example(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sweeper").rglob("*.py")}
    expected |= {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "sweeper").rglob("templates/*.html")
    }
    expected |= {f"sweeper/examples/{p.name}" for p in (ROOT / "studies").glob("*.toml")}
    assert expected - names == set()


def test_sweeper_runs_as_installed_from_another_folder(venv: Path, elsewhere: Path) -> None:
    python = str(venv / "python")
    where = subprocess.run(
        [python, "-c", "import sweeper; print(sweeper.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv.parent), where
    version = subprocess.run(
        [str(venv / "sweeper"), "--version"], cwd=elsewhere, capture_output=True, text=True
    )
    assert version.stdout.strip() == "sweeper 0.1.0 (loadsweeper)"
    helped = subprocess.run([str(venv / "sweeper"), "--help"], cwd=elsewhere, capture_output=True)
    assert helped.returncode == 0 and b"serve" in helped.stdout


def test_a_trials_worker_does_not_import_the_command_line(venv: Path, elsewhere: Path) -> None:
    """A trial's worker is a spawned interpreter, and spawning first runs the program's main
    script again as ``__mp_main__`` (multiprocessing's spawn, on every platform): the installed
    ``sweeper`` script must not bring the command line with it (optuna, SQLAlchemy, the
    reports: about a second per trial on 2 cores, before the worker can load its model)."""
    script = venv / "sweeper"
    probe = (
        f"import runpy, sys; runpy.run_path({str(script)!r}, run_name='__mp_main__'); "
        "print(sorted(m for m in ('sweeper.cli', 'optuna', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run(
        [str(venv / "python"), "-c", probe], cwd=elsewhere, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", script.read_text()


@pytest.fixture
def served(venv: Path, elsewhere: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``sweeper serve`` as installed, given no --studies: its URL and SWEEPER_HOME."""
    home = tmp_path / "home"
    env = {**os.environ, "SWEEPER_HOME": str(home)}
    proc = subprocess.Popen(
        [str(venv / "sweeper"), "serve", "--port", "0"],
        cwd=elsewhere,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen, match = [], None
        for line in proc.stderr:  # the URL line, after any warning printed before it
            seen.append(line)
            match = re.search(r"open (http://127\.0\.0\.1:\d+/) \(studies in (.+?);", line)
            if match or len(seen) > 20:
                break
        assert match, "".join(seen)
        yield match.group(1), Path(match.group(2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


def test_serve_as_installed_lists_the_examples_and_every_page_loads(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, studies = served
    assert studies == tmp_path / "home" / "studies"
    shipped = sorted(p.name for p in (ROOT / "studies").glob("*.toml"))
    assert sorted(p.name for p in studies.glob("*.toml")) == shipped
    with httpx.Client(base_url=url, timeout=30) as web:
        deadline = time.monotonic() + 30  # serve prints its URL just before it listens
        while True:
            try:
                listed = web.get("/api/studies").json()["studies"]
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "serve never listened"
                time.sleep(0.2)
        assert sorted(s["file"] for s in listed) == shipped
        pages = ["/", "/new", *(f"/studies/{name}" for name in shipped)]
        statuses = {page: web.get(page).status_code for page in pages}
        assert statuses == dict.fromkeys(pages, 200)
        assert web.get("/static/plotly.min.js").status_code == 200


@pytest.mark.real
def test_a_short_sweep_runs_through_the_installed_command(
    venv: Path, elsewhere: Path, tmp_path: Path, model_path: str
) -> None:
    study = elsewhere / "quick.toml"
    text = (ROOT / "studies" / "lmstudio-quick.toml").read_text(encoding="utf-8")
    # the shipped study, small: this tests the install
    small = {"max_tokens = 32": "max_tokens = 8", "max_tokens = 64": "max_tokens = 12"}
    study.write_text(tiny_probes(replaced(text, small)))
    env = {**os.environ, "SWEEPER_HOME": str(tmp_path / "home")}
    with LMStudioTestServer([ServerModel(KEY, model_path)]) as server:
        done = subprocess.run(
            [
                str(venv / "sweeper"),
                "run",
                "quick.toml",
                "--trials",
                "2",
                "--no-confirm",
                "--host",
                server.address,
            ],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ran 2 trials; 2 trials, 2 complete"), done.stdout
    assert (elsewhere / "lmstudio-quick.db").is_file()


@pytest.mark.parametrize(
    ("prefix", "checkout", "expected"),
    [
        ("/home/u/.local/share/pipx/venvs/loadsweeper", False, "pipx"),
        ("C:/Users/u/pipx/venvs/loadsweeper", False, "pipx"),
        ("/home/u/.local/share/uv/tools/loadsweeper", False, "uv"),
        ("/home/u/venv", False, "pip"),
        ("/home/u/sweeper/.venv", True, "checkout"),
    ],
)
def test_hints_name_the_command_for_how_sweeper_was_installed(
    prefix: str, checkout: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeper import distribution

    monkeypatch.setattr(distribution, "_in_checkout", lambda: checkout)
    monkeypatch.setattr(sys, "prefix", prefix)
    monkeypatch.setattr(sys, "executable", f"{prefix}/bin/python")
    assert distribution.install_kind() == expected
    hint = distribution.install_hint("llama-cpp-python")
    command = {
        "pipx": '`pipx inject loadsweeper "llama-cpp-python>=0.3.36"`',
        "uv": f'`uv pip install --python "{prefix}/bin/python" "llama-cpp-python>=0.3.36"`',
        "pip": f'`"{prefix}/bin/python" -m pip install "llama-cpp-python>=0.3.36"`',
        "checkout": "`make install` in the checkout",
    }[expected]
    assert (
        hint == f"run {command} (it compiles llama.cpp: a C/C++ compiler and CMake, minutes "
        "the first time)"
    )
    assert "'" not in distribution.install_hint("lmstudio")  # single quotes fail in cmd.exe
