"""What the service's forms take: checked values (a bad one is a message on the page, never a
500), a study file written from the new-sweep form (one format: the CLI runs it too), and a
preset rendered for download."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sweeper import config as config_file
from sweeper import export
from sweeper.backends import BACKENDS
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.storage import open_study

#: the settings the form offers, with the values it suggests sweeping
FIELDS: dict[str, str] = {
    "context_length": "4096, 8192, 16384",
    "gpu_offload": "",
    "eval_batch_size": "128, 512",
    "cpu_threads": "",
    "flash_attention": "false, true",
    "k_cache_type": "f16, q8_0",
    "v_cache_type": "f16, q8_0",
    "mmap": "",
    "cpu_moe_layers": "",
    "gpu_strict_vram_cap": "",
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: a range to sweep: ``2..12``, ``0.5..1.0 step 0.05``
RANGE = re.compile(
    r"\s*(?P<low>[-+0-9.eE]+)\s*\.\.\s*(?P<high>[-+0-9.eE]+)(?:\s+step\s+(?P<step>\S+))?\s*"
)


class FormError(SweeperError):
    """A form value that cannot be used, said on the page."""


def positive_int(value: Any, what: str) -> int | None:
    n = _parsed(value, what, int, "a whole number")
    if n is not None and n < 1:
        raise FormError(f"{what}: must be at least 1")
    return None if n is None else int(n)


def positive_float(value: Any, what: str) -> float | None:
    x = _parsed(value, what, float, "a number")
    if x is not None and not 0 < x < float("inf"):
        raise FormError(f"{what}: must be more than 0")
    return x


def _parsed(value: Any, what: str, kind: type[int] | type[float], name: str) -> float | None:
    """An empty field is None; anything else must read as ``kind``."""
    if value in (None, ""):
        return None
    try:
        return kind(str(value).strip())
    except ValueError:
        raise FormError(f"{what}: {value!r} is not {name}") from None


def _value(text: str, what: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if not re.fullmatch(r"[A-Za-z0-9_.]+", text):
        raise FormError(f"{what}: {text!r} is not a value")
    return text


def _number(text: str, what: str) -> int | float:
    value = _value(text, what)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormError(f"{what}: {text!r} is not a number")
    return value


def swept_values(text: str, key: str) -> str | None:
    """The TOML of the values to sweep the form names: ``a, b, c`` or a range ``low..high``
    (``step s`` optional); None when none."""
    m = RANGE.fullmatch(text)
    if m:
        low, high = _number(m["low"], key), _number(m["high"], key)
        if not low < high:
            raise FormError(f"{key}: a range goes from low to high ({text.strip()!r})")
        parts = [f"low = {low!r}", f"high = {high!r}"]
        if m["step"]:
            parts.append(f"step = {_number(m['step'], key)!r}")
        return "{ " + ", ".join(parts) + " }"
    swept = [v for v in text.split(",") if v.strip()]
    if len(swept) == 1:
        raise FormError(f"{key}: give two or more values to sweep (or a range, 1..8), or none")
    return _toml([_value(v, key) for v in swept]) if swept else None


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):  # a TOML basic string: JSON's escapes, all of Unicode, no DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007F")
    return repr(v)


def study_text(form: dict[str, Any]) -> tuple[str, str]:
    """(file name, TOML) of the study the form describes."""
    name = str(form.get("name", "")).strip()
    if not NAME.fullmatch(name):
        raise FormError("name: letters, digits, - and _ only (up to 64)")
    backend = str(form.get("backend", ""))
    if backend not in BACKENDS:
        raise FormError(f"backend: choose one of {', '.join(sorted(BACKENDS))}")
    model = str(form.get("model", "")).strip()
    if not model:
        raise FormError("model: which model to sweep (an LM Studio model key or a GGUF file)")
    lines = [f"name = {_toml(name)}", f"backend = {_toml(backend)}", f"model = {_toml(model)}"]
    trials = positive_int(form.get("trials"), "trials")
    lines += ["", "[budget]", f"trials = {trials or 40}"]
    baseline, space = [], []
    for key in FIELDS:
        base = str(form.get(f"baseline.{key}", "")).strip()
        if base:
            baseline.append(f"{key} = {_toml(_value(base, f'baseline {key}'))}")
        swept = swept_values(str(form.get(f"space.{key}", "")), key)
        if swept:
            space.append(f"{key} = {swept}")
    if not space:
        raise FormError("choose at least one setting to sweep (two or more values)")
    lines += ["", "[baseline]", *baseline, "", "[space]", *space]
    chosen = form.get("workloads") or []
    if isinstance(chosen, str):
        chosen = [chosen]
    if not isinstance(chosen, list):
        raise FormError("workloads: a list of built-in workload names")
    for w in chosen:
        if w not in ("short", "long"):
            raise FormError(f"workloads: unknown built-in workload {w!r}")
        lines += ["", "[[workloads]]", f"name = {_toml(w)}"]
    prompt = str(form.get("prompt", "")).strip()
    if prompt:
        cap = positive_int(form.get("prompt_max_tokens"), "output tokens") or 512
        lines += ["", "[[workloads]]", 'name = "mine"', f"prompt = {_toml(prompt)}"]
        lines.append(f"max_tokens = {cap}")
    if not chosen and not prompt:
        raise FormError("workloads: tick one or write your own prompt")
    return f"{name}.toml", "\n".join(lines) + "\n"


def current_settings(backend: str, model: str) -> dict[str, str]:
    """The settings the backend would load ``model`` with today, where it can say, as the
    form's baseline fields show them: for LM Studio, the model's default config (what the app
    applies on every load); else none."""
    if backend != "lmstudio" or not model:
        return {}
    from sweeper.backends.lmstudio import from_wire

    try:
        target = export.lmstudio_install_path(model)
        doc = json.loads(target.read_text(encoding="utf-8"))
        applied = from_wire({f["key"]: f["value"] for f in doc["load"]["fields"]}, None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SweeperError):
        return {}  # no such file, or one this sweeper cannot read: nothing filled in
    # the MoE expert layers are a ratio there, a layer count here: not guessed
    return {k: _text(v) for k, v in applied.items() if k in FIELDS and k != "cpu_moe_layers"}


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def write_study(studies: Path, form: dict[str, Any]) -> Path:
    """Write the form's study file into ``studies``; refused if one of that name exists or the
    file does not load (it is removed again, and the reason said)."""
    file_name, text = study_text(form)
    path = studies / file_name
    if path.exists():
        raise FormError(f"name: a study file {file_name} exists; choose another name")
    write_atomic(path, text)
    try:
        config_file.load(str(path))
    except SweeperError as exc:
        path.unlink()
        raise FormError(str(exc)) from None
    return path


def render_preset(path: Path, workload: str, fmt: str) -> tuple[str, str]:
    config = config_file.load(str(path))
    config.check_workload(workload)
    preset = export.preset_for(open_study(config), config, workload)
    return export.RENDER[fmt](preset), f"{config.name}-{workload}{export.SUFFIX[fmt]}"
