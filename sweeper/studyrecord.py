"""The study's own stored attributes, beside its trials (sweeper/records.py): the study file it
was created from, the machine it started on, drift events, confirmations, and the sweeps each
rig's service announces for it. With records.py, the only module that reads or writes
Optuna's user attributes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from sweeper.measurement import Confirmation

#: The study's user attribute that holds one machine's sweeps of it (sweeper/service/shared.py).
RIG_PREFIX = "sweeps:"


def study_config(study: optuna.Study) -> dict[str, Any] | None:
    config: dict[str, Any] | None = study.user_attrs.get("config")
    return config


def set_study_config(study: optuna.Study, config: dict[str, Any], version: str) -> None:
    study.set_user_attr("config", config)
    study.set_user_attr("sweeper_version", version)


def study_machine(study: optuna.Study) -> dict[str, Any] | None:
    machine: dict[str, Any] | None = study.user_attrs.get("machine")
    return machine


def set_study_machine(study: optuna.Study, machine: dict[str, Any]) -> None:
    study.set_user_attr("machine", machine)


def drift_events(study: optuna.Study) -> list[dict[str, Any]]:
    return list(study.user_attrs.get("drift_events", []))


def add_drift_event(study: optuna.Study, event: dict[str, Any]) -> None:
    study.set_user_attr("drift_events", [*drift_events(study), event])


def confirmations(study: optuna.Study) -> list[Confirmation]:
    """Every confirmation of the study, oldest first."""
    return [Confirmation.from_dict(d) for d in study.user_attrs.get("confirmations", [])]


def add_confirmations(study: optuna.Study, new: Sequence[Confirmation]) -> None:
    stored = list(study.user_attrs.get("confirmations", []))
    study.set_user_attr("confirmations", [*stored, *(c.to_dict() for c in new)])


def rig_sweeps(study: optuna.Study) -> dict[str, list[dict[str, Any]]]:
    """Each machine's sweeps of the study, as its service announced them."""
    return {
        key[len(RIG_PREFIX) :]: [r for r in rows if isinstance(r, dict)]
        for key, rows in study.user_attrs.items()
        if key.startswith(RIG_PREFIX) and isinstance(rows, list)
    }


def set_rig_sweeps(study: optuna.Study, machine: str, rows: list[dict[str, Any]]) -> None:
    """This machine's sweeps of the study (written only when they changed)."""
    if study.user_attrs.get(RIG_PREFIX + machine) != rows:
        study.set_user_attr(RIG_PREFIX + machine, rows)
