"""The command line, through click's CliRunner, with the fake backend in worker processes."""

from __future__ import annotations

import json
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from conftest import FAKE_STUDY, WriteStudy
from sweeper.backends.lmstudio import host as lmstudio_host
from sweeper.cli import cli


@pytest.fixture(autouse=True)
def _no_experimental_warnings() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_run_status_and_pareto(write_study: WriteStudy) -> None:
    path = write_study()
    code, out, err = invoke("run", path, "--trials", "3")
    assert code == 0, err
    assert out.startswith("ran 3 trials; 3 trials, 3 complete, 3 feasible\n")
    lines = out.splitlines()
    assert lines[1].startswith("  short: trial ") and lines[2].startswith("  long: trial ")
    assert "tok/s vs baseline, TTFT " in lines[1] and "(95% intervals)" in lines[1]
    assert "confirmed side by side in 3 interleaved rounds" in lines[1]  # clear: stopped early
    assert "confirm round 3/5: " in err and "confirm round 4/5" not in err

    code, out, _ = invoke("status", path, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["complete"] == 3 and summary["baseline_trial"] == 0
    assert len(summary["workers"]) == 1

    code, out, _ = invoke("pareto", path, "--json")
    assert code == 0
    fronts = json.loads(out)
    assert set(fronts) == {"short", "long"}
    for doc in fronts.values():
        front = doc["front"]
        assert front and all({"trial", "tok_s", "ttft_s", "settings"} <= set(p) for p in front)
        rec = doc["recommended"]
        assert rec["trial"] in {p["trial"] for p in front}
        assert (rec["status"], rec["confirmed"], rec["rounds"]) == ("confirmed", True, 3)
        assert rec["gain_tok_s_pct"][1] > 0  # the fake is deterministic: no doubt

    code, out, _ = invoke("pareto", path, "--workload", "long")
    assert code == 0
    assert out.startswith("long: ")
    assert "tok/s" in out and "short:" not in out

    code, out, err = invoke("run", path, "--trials", "3")
    assert code == 0
    assert "already holds 3 complete trials (target 3)" in err


def test_resume_to_five(write_study: WriteStudy) -> None:
    path = write_study()
    assert invoke("run", path, "--trials", "2")[0] == 0
    code, out, _ = invoke("run", path, "--trials", "5")
    assert code == 0 and out.startswith("ran 3 trials; 5 trials, 5 complete")


LMSTUDIO = {'backend = "fake"': 'backend = "lmstudio"'}
ERRORS = [
    (
        ["run", "{path}"],
        {'backend = "fake"': 'backend = "nope"'},
        "error: {path}: unknown backend 'nope'; choose one of: llama-server, llama.cpp, lmstudio\n",
    ),
    (
        ["run", "{path}"],
        {"cpu_threads = [1, 2, 4]": "cpu_threds = [1, 2]"},
        "error: {path}: space: unknown parameter 'cpu_threds'; known parameters: context_length, "
        "gpu_offload, eval_batch_size, physical_batch_size, cpu_threads, flash_attention, "
        "k_cache_type, v_cache_type, mmap, keep_in_memory, offload_kv_cache, cpu_moe_layers, "
        "gpu_strict_vram_cap\n",
    ),
    (["status", "{path}"], {}, "error: no study yet at {db}; run `sweeper run {path}` first\n"),
    (
        ["pareto", "{path}", "--workload", "medium"],
        {},
        "error: unknown workload 'medium'; this study has: short, long\n",
    ),
    (
        ["run", "{path}", "--timeout", "tomorrow"],
        {},
        "error: --timeout: 'tomorrow' is not a duration; write e.g. 8h, 90m, 1h30m or 45s\n",
    ),
    (
        ["run", "{path}", "--storage", "nosuchdb://x"],
        {},
        "error: cannot open storage nosuchdb://x: Can't load plugin: sqlalchemy.dialects:nosuchdb; "
        "check the storage URL and that the database server is running\n",
    ),
    (
        ["run", "{path}", "--storage", "postgresql://u:secret@127.0.0.1:9/db"],
        {},
        "error: cannot open storage postgresql://u:***@127.0.0.1:9/db: (psycopg.OperationalError)"
        " connection failed",
    ),
    (
        ["status", "{path}", "--storage", "mysql://u:secret@127.0.0.1:9/db"],
        {},
        "error: cannot open storage mysql://u:***@127.0.0.1:9/db: its database driver (MySQLdb) "
        f'is not installed: run `"{sys.executable}" -m pip install "mysqlclient"` (or name an '
        "installed driver in the URL, e.g. postgresql+psycopg2://)\n",
    ),
    *[
        (
            ["run", "{path}", "--host", given],
            LMSTUDIO,
            f"error: LM Studio is not reachable at {shown}; start its server with `lms server "
            "start` (or in LM Studio: Developer > Start Server), or give --host HOST:PORT\n",
        )
        for given, shown in (
            ("http://127.0.0.1:9", "127.0.0.1:9"),  # as LM Studio shows its address
            ("127.0.0.1:9", "127.0.0.1:9"),
            ("localhost:9", "localhost:9"),
            ("[::1]:9", "[::1]:9"),
            ("localhost", "localhost:1234"),  # LM Studio's default port
        )
    ],
    (
        ["run", "{path}", "--host", "http://127.0.0.1:9/v1/models"],
        LMSTUDIO,
        "error: 'http://127.0.0.1:9/v1/models' is not an address of LM Studio's server: give "
        "host:port as its Developer page shows it, e.g. http://127.0.0.1:1234, localhost:1234 or "
        "[::1]:1234\n",
    ),
    (
        ["run", "{path}", "--host", "{html}"],
        LMSTUDIO,
        "error: {html} answers, but not as LM Studio (HTTP 200, text/html): another program "
        "holds that port; give LM Studio's server address (its Developer page shows it) with "
        "--host HOST:PORT\n",
    ),
    (
        ["run", "{path}", "--host", "{silent}"],
        LMSTUDIO,
        "error: something at {silent} accepted the connection but did not answer within 0.5 s; "
        "is LM Studio's server (still) starting, or is another program listening on that port? "
        "Give LM Studio's address with --host HOST:PORT\n",
    ),
]


@pytest.fixture(scope="module")
def other_servers() -> Iterator[dict[str, str]]:
    """Not LM Studio on a port: a web server answering HTML, and a socket that never answers."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>not LM Studio</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    html = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=html.serve_forever, daemon=True).start()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever reads them
        yield {
            "html": f"127.0.0.1:{html.server_address[1]}",
            "silent": f"127.0.0.1:{silent.getsockname()[1]}",
        }
    html.shutdown()
    html.server_close()


@pytest.mark.parametrize(("args", "replace", "expected"), ERRORS)
def test_errors_are_one_line_and_exit_2(
    write_study: WriteStudy,
    tmp_path: Path,
    other_servers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    replace: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.setattr(lmstudio_host, "PROBE_TIMEOUT_S", 0.5)
    path = write_study(FAKE_STUDY, **replace)
    fill = {"path": str(path), "db": str(tmp_path.resolve() / "fake.db"), **other_servers}
    code, out, err = invoke(*[a.format(**fill) for a in args])
    assert code == 2
    assert out == ""
    assert err.startswith(expected.format(**fill))
    assert err.count("\n") == 1
    assert "secret" not in err


def test_missing_study_file(tmp_path: Path) -> None:
    code, _, err = invoke("run", tmp_path / "none.toml")
    assert (code, err) == (2, f"error: {tmp_path / 'none.toml'}: no such study file\n")


def test_missing_model_file(write_study: WriteStudy, tmp_path: Path) -> None:
    path = write_study(
        **{
            'backend = "fake"': 'backend = "llama.cpp"',
            'model = "fake-model"': 'model = "models/none.gguf"',
        }
    )
    code, _, err = invoke("run", path)
    assert code == 2
    assert err == (
        f"error: model file not found: {tmp_path}/models/none.gguf; set `model` in "
        "the study file to a .gguf path or to package:<pypi package>\n"
    )
    assert not (tmp_path / "fake.db").exists()  # nothing created before the model is found
