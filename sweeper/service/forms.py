"""What the service's forms take: checked values (a bad one is a message on the page, never a
500), a study file written from the new-sweep form (one format: the CLI runs it too), and a
preset rendered for download."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sweeper import config as config_file
from sweeper import export, plan
from sweeper.backends import BACKENDS, BackendBase, backend_class, parse_host, registered
from sweeper.config import MAX_PROMPT_CHARS, MAX_TOKENS, MAX_TRIALS
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.service.inputs import LIST, LONG_TEXT, NUMBER, TEXT, FormError
from sweeper.settings import PARAMS, check_value, shown
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
#: names Windows gives to devices, with any extension: no file can have them there
DEVICE = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])")
EFFORTS = ("low", "medium", "high")
BUILTIN = ("short", "long")
#: what the new-study form takes (every setting sweeper knows, as baseline and as values to
#: sweep; the page shows the common ones)
NEW_STUDY = {
    "name": TEXT,
    "backend": TEXT,
    "model": TEXT,
    "host": TEXT,
    "trials": NUMBER,
    "trial_timeout": TEXT,
    "assume_tok_s": NUMBER,
    "assume_load_s": NUMBER,
    "reasoning_effort": TEXT,
    "workloads": LIST,
    "prompt": LONG_TEXT,
    "prompt_max_tokens": NUMBER,
    **{f"max_tokens.{w}": NUMBER for w in BUILTIN},
    **{f"baseline.{k}": TEXT for k in PARAMS},
    **{f"space.{k}": TEXT for k in PARAMS},
}
#: a range to sweep: ``2..12``, ``0.5..1.0 step 0.05``
RANGE = re.compile(
    r"\s*(?P<low>[-+0-9.eE]+)\s*\.\.\s*(?P<high>[-+0-9.eE]+)(?:\s+step\s+(?P<step>\S+))?\s*"
)


def positive_int(value: Any, what: str, high: int = MAX_TRIALS) -> int | None:
    n = _parsed(value, what, int, "a whole number")
    if n is not None and n < 1:
        raise FormError(f"{what}: must be at least 1")
    if n is not None and n > high:
        raise FormError(f"{what}: must be at most {high:,}")
    return None if n is None else int(n)


def positive_float(value: Any, what: str, high: float) -> float | None:
    x = _parsed(value, what, float, "a number")
    if x is not None and not x > 0:  # NaN too
        raise FormError(f"{what}: must be more than 0")
    if x is not None and x > high:
        raise FormError(f"{what}: must be at most {high:g}")
    return x


def _parsed(value: Any, what: str, kind: type[int] | type[float], name: str) -> float | None:
    """An empty field is None; anything else must read as ``kind``."""
    if value in (None, ""):
        return None
    try:
        return kind(str(value).strip())
    except ValueError:
        raise FormError(f"{what}: {shown(value)} is not {name}") from None


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
        raise FormError(f"{what}: {shown(text)} is not a value")
    return text


def _setting(text: str, key: str, where: str) -> Any:
    """A setting's value as the study file's checks take it (the same bounds)."""
    value = _value(text, f"{where} {key}")
    if PARAMS[key].type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        check_value(key, value, where)
    except SweeperError as exc:
        raise FormError(str(exc)) from None
    return value


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
        low, high = _setting(str(low), key, "space"), _setting(str(high), key, "space")
        if not low < high:
            raise FormError(f"{key}: a range goes from low to high ({text.strip()!r})")
        parts = [f"low = {low!r}", f"high = {high!r}"]
        if m["step"]:
            parts.append(f"step = {_number(m['step'], key)!r}")
        return "{ " + ", ".join(parts) + " }"
    swept = [v for v in text.split(",") if v.strip()]
    if len(swept) == 1:
        raise FormError(f"{key}: give two or more values to sweep (or a range, 1..8), or none")
    return _toml([_setting(v, key, "space") for v in swept]) if swept else None


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):  # a TOML basic string: JSON's escapes, all of Unicode, no DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007F")
    return repr(v)


def study_name(form: dict[str, Any]) -> str:
    name = str(form.get("name", "")).strip()
    if not NAME.fullmatch(name):
        raise FormError("name: letters, digits, - and _ only (up to 64)")
    if DEVICE.fullmatch(name):
        raise FormError(f"name: {name!r} is a device name on Windows; choose another")
    return name


def study_text(form: dict[str, Any], trial_timeout: str | None = None) -> tuple[str, str]:
    """(file name, TOML) of the study the form describes."""
    name = study_name(form)
    backend = str(form.get("backend", ""))
    if backend not in registered():
        raise FormError(f"backend: choose one of {', '.join(sorted(BACKENDS))}")
    model = str(form.get("model", "")).strip()
    if not model:
        raise FormError("model: which model to sweep (an LM Studio model key or a GGUF file)")
    lines = [f"name = {_toml(name)}", f"backend = {_toml(backend)}", f"model = {_toml(model)}"]
    host = str(form.get("host", "")).strip()
    if host:
        try:  # as LM Studio shows it (http://127.0.0.1:1234), written as host:port
            host = parse_host(host)
        except SweeperError as exc:
            raise FormError(f"host: {exc}") from None
        lines.append(f"host = {_toml(host)}")
    trials = positive_int(form.get("trials"), "trials")
    lines += ["", "[budget]", f"trials = {trials or 40}"]
    timeout = str(form.get("trial_timeout", "")).strip() or trial_timeout
    if timeout:
        try:
            config_file.parse_duration(timeout, "trial_timeout")
        except SweeperError as exc:
            raise FormError(str(exc)) from None
        lines.append(f"trial_timeout = {_toml(timeout)}")
    effort = str(form.get("reasoning_effort", "")).strip()
    if effort:
        if effort not in EFFORTS:
            raise FormError(f"reasoning_effort: one of {', '.join(EFFORTS)}, or empty")
        lines += ["", "[sampling]", f"reasoning_effort = {_toml(effort)}"]
    baseline, space = [], []
    for key in PARAMS:
        base = str(form.get(f"baseline.{key}", "")).strip()
        if base:
            baseline.append(f"{key} = {_toml(_setting(base, key, 'baseline'))}")
        swept = swept_values(str(form.get(f"space.{key}", "")), key)
        if swept:
            space.append(f"{key} = {swept}")
    if not space:
        raise FormError("choose at least one setting to sweep (two or more values)")
    lines += ["", "[baseline]", *baseline, "", "[space]", *space]
    chosen = form.get("workloads") or []
    if isinstance(chosen, str):
        chosen = [chosen]
    for w in chosen:
        if w not in BUILTIN:
            raise FormError(f"workloads: unknown built-in workload {shown(w)}")
        lines += ["", "[[workloads]]", f"name = {_toml(w)}"]
        cap = positive_int(form.get(f"max_tokens.{w}"), f"max_tokens.{w}", MAX_TOKENS)
        if cap:
            lines.append(f"max_tokens = {cap}")
    prompt = str(form.get("prompt", "")).strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise FormError(f"prompt: more than the {MAX_PROMPT_CHARS:,} characters a prompt may have")
    if prompt:
        cap = positive_int(form.get("prompt_max_tokens"), "output tokens", MAX_TOKENS) or 512
        lines += ["", "[[workloads]]", 'name = "mine"', f"prompt = {_toml(prompt)}"]
        lines.append(f"max_tokens = {cap}")
    if not chosen and not prompt:
        raise FormError("workloads: tick one or write your own prompt")
    return f"{name}.toml", "\n".join(lines) + "\n"


def current_settings(backend: str, model: str) -> tuple[dict[str, str], str | None]:
    """The settings the backend would load ``model`` with today, where it can say, as the
    form's baseline fields show them (for LM Studio, the model's default config: what the app
    applies on every load), and why there are none when there are none."""
    try:
        cls = backend_class(backend)
    except SweeperError:
        cls = BackendBase
    applied, why = cls.current_settings(model)
    if why or not model:
        return {}, why
    # the MoE expert layers are a ratio there, a layer count here: not guessed
    values = {k: _text(v) for k, v in applied.items() if k in FIELDS and k != "cpu_moe_layers"}
    return values, None if values else "LM Studio's saved settings for it set none of these"


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def write_study(studies: Path, form: dict[str, Any]) -> Path:
    """Write the form's study file into ``studies``; refused if one of that name exists or the
    file does not load (it is removed again, and the reason said). Without a trial time limit
    but with an assumed speed, the limit comes from the plan: ``plan.TIMEOUT_MARGIN`` times a
    full measurement, at least the default."""
    file_name, text = study_text(form)
    path = studies / file_name
    if path.exists():
        raise FormError(f"name: a study file {file_name} exists; choose another name")
    tok_s = positive_float(form.get("assume_tok_s"), "assumed tok/s", plan.MAX_ASSUMED_TOK_S)
    load_s = positive_float(form.get("assume_load_s"), "assumed load time", plan.MAX_ASSUMED_LOAD_S)
    write_atomic(path, text)
    try:
        config = config_file.load(str(path))
        speeds = plan.speeds(config, [], tok_s, load_s)
        if speeds is not None and not str(form.get("trial_timeout", "")).strip():
            derived = plan.suggested_timeout(plan.plan(config, speeds).full_s)
            write_atomic(path, study_text(form, derived)[1], force=True)
            config_file.load(str(path))
    except SweeperError as exc:
        path.unlink()
        raise FormError(str(exc).replace(str(path), file_name)) from None
    return path


def render_preset(path: Path, workload: str, fmt: str) -> tuple[str, str]:
    config = config_file.load(str(path))
    config.check_workload(workload)
    preset = export.preset_for(open_study(config), config, workload)
    return export.RENDER[fmt](preset), f"{config.name}-{workload}{export.SUFFIX[fmt]}"
