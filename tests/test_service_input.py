"""`sweeper serve` under careless and hostile input, in-process (httpx over ASGI): every bad
value gets a 4xx and one named message, never a 500 or a silent change; a bug gets a 500 page
that says where its traceback went; no storage secret shows; no other site makes the service
connect out; bodies over the limit get 413."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import FAKE_STUDY
from sweeper.service import pages
from sweeper.service.app import create_app
from sweeper.service.boundary import ERROR_LOG
from sweeper.service.inputs import MAX_BODY
from sweeper.storage import redact

HUGE = "9" * 400
STUDY = {
    "name": "mine",
    "backend": "fake",
    "model": "fake-model",
    "space.cpu_threads": "1, 2",
    "workloads": "short",
}


@pytest.fixture
def web(tmp_path: Path) -> Iterator[TestClient]:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "fake.toml").write_text(FAKE_STUDY)
    huge = FAKE_STUDY.replace('name = "fake"', 'name = "huge"').replace(
        "trials = 4", f"trials = {HUGE}"
    )
    (studies / "huge.toml").write_text(huge)
    app = create_app(studies, tmp_path / "state", supervise=False)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        yield c


def form(**changes: Any) -> dict[str, Any]:
    return STUDY | changes


# (method, path, what to send, status, the exact message)
ROWS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("GET", "/api/studies/a%00b.toml", {}, 400, "not a study name: it holds a NUL character"),
    (
        "POST",
        "/api/sweeps",
        {"json": {"study": "\ud800.toml"}},
        400,
        "study: not valid text (it holds a lone surrogate)",
    ),
    (
        "GET",
        f"/api/studies/{'a' * 300}.toml",
        {},
        404,
        "no study file 'aaaaaaaaaaaaaaaaaaaaaaa… in the studies folder",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(prompt="\ud800")},
        400,
        "prompt: not valid text (it holds a lone surrogate)",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(model="\udcff")},
        400,
        "model: not valid text (it holds a lone surrogate)",
    ),
    (
        "POST",
        "/api/sweeps",
        {"content": "[" * 100_000, "headers": {"content-type": "application/json"}},
        400,
        "the body is JSON nested too deeply",
    ),
    (
        "POST",
        "/api/sweeps",
        {"json": {"study": "fake.toml", "trials": HUGE}},
        400,
        "trials: must be at most 100,000",
    ),
    (
        "GET",
        "/api/new?study=fake.toml&assume_tok_s=10&assume_load_s=1e308",
        {},
        400,
        "assumed load time: must be at most 86400",
    ),
    (
        "GET",
        "/api/new?study=fake.toml&assume_tok_s=nan",
        {},
        400,
        "assumed tok/s: must be more than 0",
    ),
    (
        "POST",
        "/api/sweeps",
        {"json": {"study": "fake.toml", "budget": "99999999999999999999h"}},
        400,
        "budget: '99999999999999999999h' is longer than the limit of 31 days",
    ),
    (
        "POST",
        "/api/sweeps",
        {"json": {"study": "fake.toml", "budget": 28800}},
        400,
        "budget: expected text (a JSON string), got int",
    ),
    (
        "GET",
        "/api/new?study=huge.toml",
        {},
        400,
        "huge.toml: budget.trials: must be 100000 or less, got a huge number",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(**{"space.foo": "1, 2"})},
        400,
        "space.foo: not a field of this form",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(**{"space.cpu_threads": "1..99999999999999999999999999"})},
        400,
        "space.cpu_threads: a huge number is above the maximum 4096",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(**{"baseline.context_length": "99999999999"})},
        400,
        "baseline.context_length: 99999999999 is above the maximum 16777216",
    ),
    (
        "POST",
        "/studies",
        {
            "content": b"name=mine&backend=fake&model=m&workloads=short&space.cpu_threads=1,2"
            b"&prompt=caf%E9",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
        400,
        "prompt: not valid UTF-8 text",
    ),
    (
        "POST",
        "/studies",
        {"data": form(prompt=["a", "b"])},
        400,
        "prompt: given more than once; give it once",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(model=["fake-model"])},
        400,
        "model: expected text (a JSON string), got list",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(prompt={"a": 1})},
        400,
        "prompt: expected text (a JSON string), got dict",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(prompt="x" * 200_001)},
        400,
        "prompt: 200,001 characters, more than the 200,000 it may have",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(name="con")},
        400,
        "name: 'con' is a device name on Windows; choose another",
    ),
    (
        "POST",
        "/api/studies",
        {"json": form(name="LPT1")},
        400,
        "name: 'LPT1' is a device name on Windows; choose another",
    ),
    (
        "POST",
        "/api/sweeps",
        {"files": {"study": ("x", b"fake.toml")}},
        415,
        "a body of type 'multipart/form-data' is not read: send a form "
        "(application/x-www-form-urlencoded) or JSON",
    ),
    ("GET", "/api/new?token2=1", {}, 400, "token2: not a field of this form"),
    ("GET", "/api/new?study=a&study=b", {}, 400, "study: given more than once; give it once"),
]


@pytest.mark.parametrize(("method", "path", "send", "status", "message"), ROWS)
def test_every_bad_value_gets_its_message(
    web: TestClient, method: str, path: str, send: dict[str, Any], status: int, message: str
) -> None:
    if "json" in send:  # as a script sends it: JSON's escapes (a lone surrogate among them)
        body = json.dumps(send.pop("json"))
        send |= {"content": body, "headers": {"content-type": "application/json"}}
    r = web.request(method, path, **send)
    assert r.status_code == status, r.text
    if path.startswith("/api/"):
        assert r.json() == {"error": message}
    else:
        assert message.replace("'", "&#39;") in r.text
    listed = web.get("/api/studies").json()["studies"]
    assert [s["file"] for s in listed] == ["fake.toml", "huge.toml"]  # nothing was written
    assert web.get("/api/sweeps").json()["sweeps"] == []  # nothing was queued


def test_a_hand_written_study_with_huge_trials_is_refused_when_loaded(web: TestClient) -> None:
    row = next(s for s in web.get("/api/studies").json()["studies"] if s["file"] == "huge.toml")
    assert row["state"] == "invalid"
    assert row["error"].endswith("budget.trials: must be 100000 or less, got a huge number")
    assert web.get("/").status_code == 200


def test_a_bug_is_a_500_page_that_says_where_its_traceback_went(
    web: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug planted by the test")

    monkeypatch.setattr(pages, "studies_page", broken)
    page = web.get("/")
    log = tmp_path / "state" / ERROR_LOG
    assert page.status_code == 500
    assert "A bug in sweeper" in page.text and str(log) in page.text
    api = web.get("/api/studies")
    assert api.status_code == 500 and "(RuntimeError)" in api.json()["error"]
    assert log.read_text().count("RuntimeError: a bug planted by the test") == 2


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://me:hunter2@db/s", "postgresql://me:***@db/s"),
        ("postgresql://me@db/s?password=hunter2", "postgresql://me@db/s?password=***"),
        ("postgresql://db/s?sslpassword=hunter2&sslmode=require", None),
        ("mysql+pymysql://me@db/s?passwd=hunter2", "mysql+pymysql://me@db/s?passwd=***"),
        ("postgresql://db/s?pass%77ord=hunter2", "postgresql://db/s?password=***"),
        ("postgresql://db/s?%70assword=hunter2&application_name=sweeper", None),
        ("postgresql://db/s?options=-c%20secret%3Dhunter2", "postgresql://db/s?options=***"),
        ("sqlite:////tmp/s.db?mode=ro", "sqlite:////tmp/s.db?mode=ro"),
    ],
)
def test_no_storage_secret_is_shown(url: str, shown: str | None) -> None:
    text = redact(url)
    assert "hunter2" not in text
    if shown is not None:
        assert text == shown
    assert "sslmode=require" in text or "sslmode" not in url
    assert "application_name=sweeper" in text or "application_name" not in url


def test_a_password_in_the_query_never_shows_on_a_page(web: TestClient, tmp_path: Path) -> None:
    url = "postgresql://me@127.0.0.1:9/db?password=hunter2&sslpassword=hunter3"
    shared = FAKE_STUDY.replace('name = "fake"', f'name = "shared"\nstorage = "{url}"')
    (tmp_path / "studies" / "shared.toml").write_text(shared)
    for path in ("/", "/api/studies", "/studies/shared.toml", "/api/studies/shared.toml"):
        r = web.get(path)
        assert "hunter" not in r.text and r.status_code < 500, path


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A port that records every connection made to it (and closes it at once)."""
    seen: list[object] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            seen.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
@pytest.mark.parametrize("mode", ["navigate", "no-cors"])
def test_another_site_cannot_make_the_service_connect_out(
    web: TestClient, listener: tuple[int, list[object]], site: str, mode: str
) -> None:
    port, seen = listener
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": "image"}
    r = web.get(f"/new?models=1&host=127.0.0.1:{port}", headers=headers)
    assert r.status_code == 403
    threading.Event().wait(0.5)  # a connection made would have been accepted by now
    assert seen == []


def test_links_from_elsewhere_still_open_pages(
    web: TestClient, listener: tuple[int, list[object]]
) -> None:
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert web.get("/", headers=link).status_code == 200
    assert web.get("/new?study=fake.toml", headers=link).status_code == 200
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    assert web.get("/api/studies", headers=image).status_code == 403
    port, seen = listener  # and sweeper's own form does connect: the listener works
    own = web.get(
        f"/api/new?models=1&host=127.0.0.1:{port}", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert own.status_code == 200 and own.json()["models_error"]
    assert seen


@pytest.mark.parametrize("length", [True, False])
def test_a_body_over_the_limit_is_413(web: TestClient, length: bool) -> None:
    body = json.dumps({"study": "x" * MAX_BODY}).encode()
    content: Any = body if length else iter([body[: MAX_BODY // 2], body[MAX_BODY // 2 :]])
    headers = {"content-type": "application/json"}
    r = web.post("/api/sweeps", content=content, headers=headers)
    assert ("content-length" in r.request.headers) is length
    assert r.status_code == 413
    assert r.json() == {"error": "the request body is larger than the 4 MiB sweeper reads"}
    page = web.post("/sweeps", content=body, headers=headers)
    assert page.status_code == 413 and "larger than the 4 MiB" in page.text


def test_a_body_at_the_limit_is_read(web: TestClient) -> None:
    body = json.dumps({"study": "fake.toml", "budget": " " * (MAX_BODY - 60)}).encode()
    assert len(body) <= MAX_BODY
    r = web.post("/api/sweeps", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("budget: ")
