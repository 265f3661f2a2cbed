"""What a request carries, read strictly: a query string, a form or a JSON object becomes one
dict of text (a list for the fields that repeat), or a message naming the field. Nothing is
dropped or changed on the way: an unknown field, a repeated one, text that is not UTF-8 (or
holds a lone surrogate or a NUL) and JSON of the wrong type are refused by name."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request

from sweeper.config import MAX_PROMPT_CHARS
from sweeper.errors import SweeperError
from sweeper.settings import shown

#: The largest request body the service reads (a prompt of the most characters a study file
#: holds, in UTF-8, fits with room to spare); above it: 413.
MAX_BODY = 4 * 1024 * 1024
#: The longest value of a field other than a prompt.
MAX_FIELD_CHARS = 4096

TEXT, NUMBER, LIST, LONG_TEXT = "text", "number", "list", "long text"
Spec = Mapping[str, str]
Values = dict[str, str | list[str]]


TOO_LARGE = f"the request body is larger than the {MAX_BODY // (1024 * 1024)} MiB sweeper reads"


class FormError(SweeperError):
    """A form value that cannot be used, said on the page."""

    status = 400


class Unsupported(FormError):
    status = 415


def text(value: str, what: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` if it is text a file and a terminal can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormError(f"{what}: not valid text (it holds a lone surrogate)") from None
    if "\x00" in value:
        raise FormError(f"{what}: holds a NUL character")
    if len(value) > limit:
        raise FormError(f"{what}: {len(value):,} characters, more than the {limit:,} it may have")
    return value


def _decoded(raw: bytes, what: str) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"{what}: not valid UTF-8 text") from None


def _pairs(raw: bytes) -> list[tuple[str, str]]:
    out = []
    for part in raw.split(b"&"):
        if part:
            key, _, value = part.partition(b"=")
            name = _decoded(key, "a field name")
            out.append((name, _decoded(value, text(name, "a field name", 200))))
    return out


def _checked(pairs: list[tuple[str, Any]], spec: Spec) -> Values:
    """The fields by name, each checked against ``spec`` (name -> kind)."""
    got: dict[str, list[str]] = {}
    for name, value in pairs:
        kind = spec.get(text(name, "a field name", 200))
        if kind is None:
            raise FormError(f"{name}: not a field of this form")
        if name in got and kind != LIST:
            raise FormError(f"{name}: given more than once; give it once")
        limit = MAX_PROMPT_CHARS if kind == LONG_TEXT else MAX_FIELD_CHARS
        got.setdefault(name, []).append(text(value, name, limit))
    return {k: v if spec[k] == LIST else v[0] for k, v in got.items()}


def query(request: Request, spec: Spec) -> Values:
    return _checked(_pairs(bytes(request.scope.get("query_string", b""))), spec)


def _json_pairs(body: Any, spec: Spec) -> list[tuple[str, str]]:
    if not isinstance(body, dict):
        raise FormError("the body must be a JSON object")
    pairs = []
    for name, value in body.items():
        kind = spec.get(name)
        values = value if kind == LIST and isinstance(value, list) else [value]
        for v in values:
            ok = isinstance(v, str) or (
                kind == NUMBER and isinstance(v, int | float) and not isinstance(v, bool)
            )
            if kind is not None and not ok:
                want = "text or a number" if kind == NUMBER else "text (a JSON string)"
                if kind == LIST:
                    want = "text or a list of text"
                raise FormError(f"{name}: expected {want}, got {type(v).__name__}")
            pairs.append((name, v if isinstance(v, str) else repr(v)))
    return pairs


async def body(request: Request, spec: Spec) -> Values:
    """A form (urlencoded) or a JSON object, as ``spec`` allows."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()  # bounded: the app refuses bodies over MAX_BODY with 413
    if kind == "application/json":
        try:
            data = json.loads(raw)
        except RecursionError:
            raise FormError("the body is JSON nested too deeply") from None
        except ValueError:  # UnicodeDecodeError too
            raise FormError("the body is not JSON (in UTF-8)") from None
        return _checked(_json_pairs(data, spec), spec)
    if kind in ("application/x-www-form-urlencoded", ""):
        return _checked(_pairs(raw), spec)
    raise Unsupported(
        f"a body of type {shown(kind)} is not read: send a form "
        "(application/x-www-form-urlencoded) or JSON"
    )
