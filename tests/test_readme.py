"""What the README says works, works as written: every `sweeper ...` line of its code blocks is
run here (in a copy of the repository's studies, those it runs made small), or is named below
with the reason it cannot run in a test; `--help` of every command; the command table is the
CLI's own (cog)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_probes

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
SWEEPER = str(Path(sys.executable).parent / "sweeper")

#: README lines that cannot run in a test, and why (a line missing here and from the runnable
#: ones fails the test: nothing is skipped silently).
NOT_HERE = {
    "sweeper run studies/lmstudio-quick.toml": "needs a running LM Studio",
    "sweeper run studies/rtx3060-gpt-oss-20b.toml --timeout 8h": "needs LM Studio and a GPU",
    "sweeper run studies/rtx3060-gpt-oss-20b.toml --storage "
    "postgresql://sweeper:PASSWORD@db-host/sweeper --timeout 8h": "needs a database host",
    "sweeper dashboard studies/rtx3060-gpt-oss-20b.toml --storage "
    "postgresql://sweeper:PASSWORD@db-host/sweeper": "needs a database host (the dashboard "
    "itself: tests/test_dashboard.py)",
    "sweeper status studies/rtx3060-gpt-oss-20b.toml --storage postgresql://...": "a template",
    "sweeper run studies/rtx3060-gpt-oss-20b-llama-server.toml --timeout 8h": "needs the "
    "gpt-oss-20b GGUF and a GPU",
    "sweeper serve": "runs until stopped; tests/test_installed.py starts it as written, from "
    "the installed wheel in another folder",
    "sweeper serve --studies studies": "runs until stopped; tests/test_service_browser.py "
    "starts it on a copy of studies/",
    "sweeper serve --studies ~/sweeps --port 9000": "runs until stopped, on a folder of the "
    "user's; --studies is tested in tests/test_service.py, --port by the browser test",
    "sweeper compare studies/demo.toml --config one-thread.toml --config two-threads.toml "
    "--repeats 4": "an example of output; the tour's compare line runs",
}

#: The shipped studies the README runs, small enough for a test (the README's commands run on
#: them as written): small budgets and token caps, and tiny probes and confirmations.
SMALL = {
    "demo.toml": {
        "trials = 12": "trials = 4",
        "max_tokens = 48": "max_tokens = 8",
        "max_tokens = 96": "max_tokens = 12",
        "repeats = 3": "repeats = 1",
    },
    "llama-server-quick.toml": {
        "trials = 8": "trials = 3",
        "max_tokens = 48": "max_tokens = 8",
        "max_tokens = 96": "max_tokens = 12",
        "repeats = 2": "repeats = 1",
    },
}


def readme_commands() -> list[str]:
    """Every line of a code block that runs sweeper, as a user would type it."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            line = re.sub(r"^(\.venv[/\\](bin|Scripts)[/\\])", "", line)
            if line.startswith("sweeper "):
                lines.append(re.sub(r"\s+", " ", line.replace("\\", "/")))
    return lines


@pytest.mark.real
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    studies = tmp_path / "studies"
    shutil.copytree(ROOT / "studies", studies, ignore=shutil.ignore_patterns("*.db", "*.log"))
    for name, small in SMALL.items():
        text = (studies / name).read_text()
        for old, new in small.items():
            assert old in text, old
            text = text.replace(old, new)
        (studies / name).write_text(tiny_probes(text))
    assert {f"studies/{name}" for name in SMALL} >= {
        c.split()[2] for c in commands if c.split()[1] == "run" and c not in NOT_HERE
    }, "a study the README runs is run here at full size"
    ran = []
    for command in commands:
        if command in NOT_HERE or ("lmstudio" in command and "studies/lmstudio" in command):
            assert command in NOT_HERE, f"README line neither runnable here nor excused: {command}"
            continue
        result = subprocess.run(
            [SWEEPER, *shlex.split(command)[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        check_shape(command, result.stdout)
        ran.append(command)
    assert not set(NOT_HERE) - set(commands), "excused lines that are no longer in the README"
    assert len(ran) >= 8


def check_shape(command: str, out: str) -> None:
    """The output looks like what the README says the command prints."""
    name = command.split()[1]
    first = out.splitlines()[0] if out else ""
    if name == "run":
        assert first.startswith("ran ") and " trials; " in first, out
        assert "see the fronts with: sweeper pareto" in out
    elif name == "status":
        assert first.startswith("study demo (sqlite:///"), out
        assert "recommended short: trial " in out
    elif name == "pareto":
        assert re.match(r"short: \d+ trials on the front \(median of \d+ runs", first), out
    elif name == "plan":
        assert first.startswith("plan for "), out
        assert "one screening: " in out and "the confirmation: at most" in out
    elif name == "confirm":
        assert re.match(r"(short|long): trial \d+", first), out
    elif name == "compare":
        assert re.search(r"short: median \[95% interval\] of 3 interleaved rounds", out), out
    elif name in ("report", "export"):
        assert out.strip(), out


COMMANDS = [
    "run",
    "confirm",
    "compare",
    "plan",
    "status",
    "pareto",
    "report",
    "export",
    "undo",
    "dashboard",
    "serve",
]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help(command: str) -> None:
    result = subprocess.run(
        [SWEEPER, *([command] if command else []), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("Usage: sweeper")


def test_the_command_table_is_the_clis_own() -> None:
    """`cog -r README.md` writes the table from the CLI; here it must already be so."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cog"), "--check", str(README)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_is_in_the_table() -> None:
    from sweeper.cli import cli

    text = README.read_text(encoding="utf-8")
    assert sorted(cli.commands) == sorted(COMMANDS)  # a new command joins the --help test
    for name in cli.commands:
        assert f"| `sweeper {name} " in text, name
