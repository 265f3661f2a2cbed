"""What the README and the docs say works, works as written: every `sweeper ...` line of their
code blocks is run here (in a copy of the repository's studies, those it runs made small; the
LM Studio tutorial's against the LM Studio test server on LM Studio's default address), or is
named below with the reason it cannot run in a test; `--help` of every command; every part cog
writes from the code or from `benchmarks/results/` is what cog writes today."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import replaced, tiny_probes

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
#: The pages whose commands run here: the README and every docs page.
PAGES = [README, *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
#: Where the command table lives (`sweeper --help`'s commands, each with its synopsis).
CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"
#: LM Studio's default address, where the LM Studio tutorial's commands find the test server.
LMSTUDIO_PORT = 1234
SWEEPER = str(Path(sys.executable).parent / "sweeper")

#: Documented lines that cannot run in a test, and why (a line missing here and from the
#: runnable ones fails the test: nothing is skipped silently).
NOT_HERE = {
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
    "--repeats 4": "needs the two files the page shows; the tour's compare line runs, and "
    "tests/test_compare.py compares configuration files",
    "sweeper export studies/rtx3060-gpt-oss-20b.toml --workload long --format lmstudio "
    "--install": "needs the article's study swept (LM Studio and a GPU), and writes into LM "
    "Studio's own folder; tests/test_export.py installs into a temporary one",
    "sweeper undo 1": "needs an install to undo; tests/test_service.py installs from the CLI "
    "and undoes from the service, and the reverse (`sweeper undo`, listing, runs here)",
    "sweeper export studies/rtx3060-gpt-oss-20b.toml --workload long --format model-yaml "
    "-o model.yaml": "needs the article's study swept (LM Studio and a GPU); "
    "tests/test_export.py writes every format",
}

#: The shipped studies the README runs, small enough for a test (the README's commands run on
#: them as written): small budgets and token caps, no warm-up, tiny probes and confirmations.
SMALL = {
    "demo.toml": {
        "trials = 12": "trials = 3",
        "promote = 2": "promote = 1",
        "max_tokens = 48": "max_tokens = 8",
        "max_tokens = 96": "max_tokens = 12",
        "repeats = 3": "repeats = 1",
        "warmup = 1": "warmup = 0",
    },
    "llama-server-quick.toml": {
        "trials = 8": "trials = 2",
        "max_tokens = 48": "max_tokens = 8",
        "max_tokens = 96": "max_tokens = 12",
        "repeats = 2": "repeats = 1",
        "warmup = 1": "warmup = 0",
    },
    "lmstudio-quick.toml": {
        "trials = 6": "trials = 2",
        "max_tokens = 32": "max_tokens = 8",
        "max_tokens = 64": "max_tokens = 12",
        "repeats = 2": "repeats = 1",
        "warmup = 1": "warmup = 0",
    },
}


def page_commands(page: Path) -> list[str]:
    """Every line of a page's code blocks that runs sweeper, as a user would type it (in a
    block of program output, only the `$ ` lines: the rest is what sweeper printed)."""
    lines = []
    text = page.read_text(encoding="utf-8")
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if lang == "text" and not line.startswith("$ "):
                continue
            line = line.split(" #")[0].strip().removeprefix("$ ")
            line = re.sub(r"^(\.venv[/\\](bin|Scripts)[/\\])", "", line)
            if line.startswith("sweeper "):
                lines.append(re.sub(r"\s+", " ", line.replace("\\", "/")))
    return lines


def documented_commands() -> list[str]:
    """Every page's commands, each once, in the order a reader meets them (the README first)."""
    return list(dict.fromkeys(c for page in PAGES for c in page_commands(page)))


def small_studies(tmp_path: Path) -> Path:
    """A copy of the repository's studies with the ones the pages run made small."""
    studies = tmp_path / "studies"
    shutil.copytree(ROOT / "studies", studies, ignore=shutil.ignore_patterns("*.db", "*.log"))
    for name, small in SMALL.items():
        (studies / name).write_text(tiny_probes(replaced((studies / name).read_text(), small)))
    return studies


def run_as_written(command: str, cwd: Path) -> None:
    result = subprocess.run(
        [SWEEPER, *shlex.split(command)[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    check_shape(command, result.stdout)


def on_lmstudio(command: str) -> bool:
    return "studies/lmstudio" in command


def test_the_pages_commands_are_counted() -> None:
    """Each page's commands are found (a page whose code blocks changed shape would silently
    drop out of the test otherwise), and the LM Studio tutorial holds its commands."""
    by_page = {p.relative_to(ROOT).as_posix(): page_commands(p) for p in PAGES}
    assert len(by_page["README.md"]) >= 10
    assert "sweeper run studies/lmstudio-quick.toml" in by_page["docs/tutorial/lmstudio.md"]
    assert "sweeper run studies/llama-server-quick.toml" in by_page["docs/tutorial/llamacpp.md"]
    commands = documented_commands()
    runnable = [c for c in commands if c not in NOT_HERE]
    assert len(runnable) >= 13, runnable
    forever = [c for c in runnable if c.split()[1] in ("serve", "dashboard")]
    assert not forever, f"these run until stopped: excuse them in NOT_HERE, with why: {forever}"


@pytest.mark.real
def test_every_documented_command_runs_as_written(tmp_path: Path) -> None:
    commands = [c for c in documented_commands() if not on_lmstudio(c)]
    small_studies(tmp_path)
    assert {f"studies/{name}" for name in SMALL} >= {
        c.split()[2] for c in commands if c.split()[1] == "run" and c not in NOT_HERE
    }, "a study the pages run is run here at full size"
    ran = []
    for command in commands:
        if command in NOT_HERE:
            continue
        run_as_written(command, tmp_path)
        ran.append(command)
    assert not set(NOT_HERE) - set(documented_commands()), "excused lines no page holds"
    assert len(ran) >= 10


@pytest.mark.real
def test_the_lmstudio_tutorials_commands_run_against_lmstudios_default_address(
    tmp_path: Path, model_path: str
) -> None:
    """As a user types them, with no --host: sweeper finds the LM Studio test server where it
    finds LM Studio (the SDK's port discovery, then 127.0.0.1:1234)."""
    from lmstudio_server import LMStudioTestServer, ServerModel

    commands = [c for c in documented_commands() if on_lmstudio(c) and c not in NOT_HERE]
    assert "sweeper run studies/lmstudio-quick.toml" in commands
    small_studies(tmp_path)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", LMSTUDIO_PORT)) == 0:
            pytest.fail(f"something (LM Studio?) listens on {LMSTUDIO_PORT}: stop it to test")
    model = ServerModel("google/gemma-3-270m", model_path)
    with LMStudioTestServer([model], port=LMSTUDIO_PORT) as server:
        for command in commands:
            run_as_written(command, tmp_path)
        assert server.log.loads, "the commands did not reach the server"


def check_shape(command: str, out: str) -> None:
    """The output looks like what the README says the command prints."""
    name = command.split()[1]
    first = out.splitlines()[0] if out else ""
    if name == "run":
        assert first.startswith("ran ") and " trials; " in first, out
        assert "see the fronts with: sweeper pareto" in out
    elif name == "status":
        assert re.match(r"study [\w.-]+ \(sqlite:///", first), out
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


def test_help_of_the_installed_command() -> None:
    result = subprocess.run([SWEEPER, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("Usage: sweeper")


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    """In this process: the installed command is the test above's (a process each cost 1.5 s)."""
    from click.testing import CliRunner

    from sweeper.cli import cli

    result = CliRunner().invoke(cli, [command, "--help"], prog_name="sweeper")
    assert result.exit_code == 0 and result.output.startswith(f"Usage: sweeper {command} "), (
        result.output
    )


def test_what_cog_writes_is_up_to_date() -> None:
    """`make cog` writes the command table, every command's help, the settings, the failure
    reasons, the study file's keys, the routes, the module map and every benchmark figure; here
    they must already be so."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cog"), "-I", "docs", "--check", *map(str, PAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_is_in_the_table() -> None:
    from sweeper.cli import cli

    text = CLI_PAGE.read_text(encoding="utf-8")
    assert sorted(cli.commands) == sorted(COMMANDS)  # a new command joins the --help test
    for name in cli.commands:
        assert f"| `sweeper {name} " in text, name
