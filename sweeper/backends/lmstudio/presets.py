"""A preset in the forms LM Studio takes: its config file, a model.yaml, an ``lms load``
command and an SDK snippet (each from the backend's own translation of the settings)."""

from __future__ import annotations

import json
import pprint

import yaml

from sweeper.backends import PresetSource
from sweeper.backends.lmstudio.config import preset_fields, to_config


def lmstudio_json(p: PresetSource) -> str:
    doc = {
        "preset": "",
        "operation": {"fields": []},
        "load": {"fields": preset_fields(p.settings, p.n_layers)},
    }
    return json.dumps(doc, indent=2) + "\n"


def model_yaml(p: PresetSource) -> str:
    doc = {
        "model": f"sweeper/{p.model.split('/')[-1]}-{p.workload}",
        "base": p.model,
        "config": {"load": {"fields": preset_fields(p.settings, p.n_layers)}},
    }
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return f"# {p.header()}\n{text}"


def lms_command(p: PresetSource) -> str:
    s = p.settings
    args = ["lms", "load", p.model]
    if s.gpu_offload is not None:
        args += [
            "--gpu",
            "max" if s.gpu_offload >= 1 else "off" if s.gpu_offload <= 0 else f"{s.gpu_offload:g}",
        ]
    if s.context_length is not None:
        args += ["--context-length", str(s.context_length)]
    args += ["--identifier", f"sweeper-{p.workload}"]
    rest = {k: v for k, v in s.to_dict().items() if k not in ("gpu_offload", "context_length")}
    lines = [f"# {p.header()}", " ".join(args)]
    if rest:
        lines.append(
            "# `lms load` has no flags for: "
            + ", ".join(f"{k}={v}" for k, v in rest.items())
            + "; put them in the model's default config (--format lmstudio)"
        )
    return "\n".join(lines) + "\n"


def sdk_snippet(p: PresetSource) -> str:
    # the lmstudio backend's own translation: what the snippet says is what a sweep sent
    config, raw = to_config(p.settings, p.n_layers)
    lines = [
        f"# {p.header()}",
        "# client.llm.load_new_instance(MODEL, identifier, config=config, ttl=None)",
        f"config = {pprint.pformat(config, sort_dicts=False)}",
    ]
    if raw:
        lines.append(
            "# Not in SDK 1.5.0's typed config (sweeper sends them as raw load "
            "fields): " + ", ".join(f"{k}={v}" for k, v in raw.items())
        )
    return "\n".join(lines) + "\n"


RENDER = {
    "lmstudio": lmstudio_json,
    "model-yaml": model_yaml,
    "lms": lms_command,
    "sdk": sdk_snippet,
}
