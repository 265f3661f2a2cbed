"""Opening a study's storage: Optuna's RDB storage with heartbeats, the same-study and
same-machine checks, and storage URLs without their passwords."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection

from sweeper import __version__, distribution, fingerprint, studyrecord
from sweeper.errors import StorageError

if TYPE_CHECKING:
    from sweeper.config import StudyConfig


def metric_names(workloads: list[str]) -> list[str]:
    return [m for w in workloads for m in (f"{w}_tok_s", f"{w}_ttft_s")]


#: Query parameters of a storage URL whose values are shown: none of them carries a secret.
#: Every other value (``password``, ``sslpassword``, MySQL's ``passwd``, a driver's own) is
#: hidden, whatever its spelling or encoding.
SHOWN_QUERY = frozenset(
    {"sslmode", "connect_timeout", "application_name", "charset", "target_session_attrs"}
    | {"timeout", "mode", "check_same_thread", "uri", "cache", "driver"}
)


class NoStudyYet(StorageError):
    """The study has not been created in its storage: it has not run yet."""


def redact(url: str) -> str:
    """The storage URL without its secrets, for messages, pages and reports: the password of
    its user part, and the value of every query parameter but the harmless ones."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
        query = {k: v if k.lower() in SHOWN_QUERY else "***" for k, v in parsed.query.items()}
        shown = parsed.set(query=query).render_as_string(hide_password=True)
        return shown.replace("=%2A%2A%2A", "=***")
    except Exception:  # an unparsable URL has no password we can find; say nothing of it
        return "<storage URL>"


def open_storage(url: str, heartbeat_s: float = 30, grace_s: float = 120) -> RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (kill -9, power cut)
    is failed after ``grace_s`` by the next worker that asks for a trial, and retried once."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        # A connection per operation, closed after it (operations are seconds apart at most):
        # nothing to go stale when the database restarts overnight, and nothing left open
        engine_kwargs["poolclass"] = sqlalchemy.pool.NullPool
    try:
        for attempt in range(5):
            try:
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=max(1, round(heartbeat_s)),
                    grace_period=max(2, round(grace_s)),
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
                # Workers starting together on an empty database race to create the tables, as
                # does a page (or any reader) opening a storage a child process is creating:
                # SQLite then says "table ... already exists"
                creating = isinstance(exc, sqlalchemy.exc.IntegrityError) or (
                    "already exists" in str(exc)
                )
                if attempt == 4 or not creating:
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")
    except ImportError as exc:
        raise StorageError(f"cannot open storage {redact(url)}: {_missing_driver(exc)}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(
            f"cannot open storage {redact(url)}: {first.replace(url, redact(url))}; "
            "check the storage URL and that the database server is running"
        ) from None


#: Python module of a database driver -> the package that provides it.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "mysql": "mysql-connector-python",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}


def _missing_driver(exc: ImportError) -> str:
    """Optuna says "Failed to import DB access module"; say which driver, and what to install."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    module = (getattr(cause, "name", None) or "").split(".")[0]
    if not module:
        return f"a database driver is missing ({exc}); install the one the URL names"
    package = DRIVER_PACKAGES.get(module, module)
    return (
        f"its database driver ({module}) is not installed: {distribution.install_hint(package)} "
        "(or name an installed driver in the URL, e.g. postgresql+psycopg2://)"
    )


def open_study(
    config: StudyConfig, storage_url: str | None = None, *, create: bool = False
) -> optuna.Study:
    """Open the study the file describes; create it only when ``create``."""
    url = storage_url or config.storage
    if not create and url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.exists(path):
            raise NoStudyYet(f"no study yet at {path}; run `sweeper run {config.path}` first")
    storage = open_storage(url, config.budget.heartbeat_s, config.budget.heartbeat_grace_s)
    names = metric_names([w.name for w in config.workloads])
    if create:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            load_if_exists=True,
            directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE] * len(config.workloads),
        )
        if not studyrecord.study_config(study):
            study.set_metric_names(names)
            studyrecord.set_study_config(study, config.describe(), __version__)
    else:
        try:
            study = optuna.load_study(study_name=config.name, storage=storage)
        except KeyError:
            raise NoStudyYet(
                f"no study named {config.name!r} in {redact(url)}; "
                f"run `sweeper run {config.path}` first"
            ) from None
    _check_same_study(study, config, names)
    return study


def _check_same_study(study: optuna.Study, config: StudyConfig, names: list[str]) -> None:
    stored = studyrecord.study_config(study)
    if stored is None:
        return
    current = config.describe()
    changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if changed or study.metric_names != names:
        raise StorageError(
            f"study {config.name!r} was created with a different "
            f"{', '.join(changed) or 'set of workloads'} than {config.path} now has; "
            "give the study a new name (or restore the file) so that results stay comparable"
        )


def check_machine(study: optuna.Study, machine: dict[str, Any], allow_mixed: bool) -> None:
    """Refuse a worker whose hardware differs from the study's first, unless allowed:
    numbers from different machines are not comparable."""
    first = studyrecord.study_machine(study)
    if first is None:
        studyrecord.set_study_machine(study, machine)
        return
    diff = fingerprint.differences(first, machine)
    if diff and not allow_mixed:
        raise StorageError(
            f"this machine differs from the one study {study.study_name!r} started on "
            f"({'; '.join(diff)}); its numbers would not be comparable. Use a new study name, "
            "or pass --allow-mixed-hardware to add it anyway (results are then grouped by machine)"
        )
