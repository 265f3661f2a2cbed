"""Contract: the replies LM Studio's protocol needs, per SDK reply type, as the reference's
minimum-field table gives them (shared/reference/lmstudio-sdk.md section 3.7). An SDK upgrade
that changes what it requires fails here, loudly, before the test server silently diverges."""

from __future__ import annotations

from typing import Any

import lmstudio
import msgspec
import pytest
from lmstudio import _sdk_models as sdk
from lmstudio.json_api import LoadModelEndpoint

INFO = {
    "type": "llm",
    "modelKey": "google/gemma-3-270m",
    "format": "gguf",
    "displayName": "google/gemma-3-270m",
    "path": "/m/gemma.gguf",
    "sizeBytes": 253113024,
    "vision": False,
    "trainedForToolUse": False,
    "maxContextLength": 32768,
}
INSTANCE = {
    **INFO,
    "identifier": "sweeper-1",
    "instanceReference": "b9f9718b97488aa2",
    "contextLength": 2048,
}
FRAGMENT = {
    "content": " Paris",
    "tokensCount": 1,
    "containsDrafted": False,
    "reasoningType": "none",
}
STATS = {"stopReason": "maxPredictedTokensReached"}

# (SDK struct, minimum reply, required wire fields)
CONTRACT: list[tuple[type[Any], dict[str, Any], set[str]]] = [
    (
        sdk.LlmInfo,
        INFO,
        {
            "modelKey",
            "format",
            "displayName",
            "path",
            "sizeBytes",
            "vision",
            "trainedForToolUse",
            "maxContextLength",
        },
    ),
    (
        sdk.LlmInstanceInfo,
        INSTANCE,
        {
            "modelKey",
            "format",
            "displayName",
            "path",
            "sizeBytes",
            "vision",
            "trainedForToolUse",
            "maxContextLength",
            "identifier",
            "instanceReference",
            "contextLength",
        },
    ),
    (sdk.LlmPredictionFragment, FRAGMENT, set(FRAGMENT)),
    (sdk.LlmPredictionStats, STATS, {"stopReason"}),
    (sdk.KvConfig, {"fields": []}, {"fields"}),
    (sdk.LlmChannelLoadModelToClientPacketSuccess, {"type": "success", "info": INSTANCE}, {"info"}),
    (
        sdk.LlmChannelPredictToClientPacketFragment,
        {"type": "fragment", "fragment": FRAGMENT},
        {"fragment"},
    ),
    # predict's final 'success' is matched structurally, not by its packet struct: the SDK
    # converts stats -> LlmPredictionStats and modelInfo -> LlmInfo (both above), and the
    # end-to-end tests run against a server that sends modelInfo without an identifier.
]


def test_the_sdk_is_the_pinned_version() -> None:
    assert lmstudio.__version__ == "1.5.0"


@pytest.mark.parametrize(
    ("struct", "reply", "required"), CONTRACT, ids=[c[0].__name__ for c in CONTRACT]
)
def test_required_fields_are_the_minimum_table(
    struct: type[Any], reply: dict[str, Any], required: set[str]
) -> None:
    fields = msgspec.structs.fields(struct)
    assert {f.encode_name for f in fields if f.required} == required


@pytest.mark.parametrize(
    ("struct", "reply", "required"), CONTRACT, ids=[c[0].__name__ for c in CONTRACT]
)
def test_the_minimum_reply_is_accepted_and_less_is_not(
    struct: type[Any], reply: dict[str, Any], required: set[str]
) -> None:
    struct._from_api_dict(reply)
    for name in required:
        with pytest.raises(msgspec.ValidationError):
            struct._from_api_dict({k: v for k, v in reply.items() if k != name})


def test_a_model_info_without_format_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        sdk.LlmInfo._from_api_dict({k: v for k, v in INFO.items() if k != "format"})


def test_the_load_endpoint_shape_sweeper_extends() -> None:
    """load_with_raw_fields appends raw fields to the first layer of this structure."""
    endpoint = LoadModelEndpoint(
        "m",
        "sweeper-1",
        None,
        sdk.LlmChannelLoadModelCreationParameter,
        sdk.LlmLoadModelConfig,
        {},
        None,
    )
    params = endpoint.creation_params
    assert params["modelKey"] == "m" and params["identifier"] == "sweeper-1"
    assert "ttlMs" not in params
    assert params["loadConfigStack"] == {
        "layers": [{"layerName": "apiOverride", "config": {"fields": []}}]
    }


def test_the_sdk_still_drops_unknown_keys() -> None:
    """Why sweeper checks its own keys: if this starts failing, the SDK began validating."""
    from lmstudio._kv_config import load_config_to_kv_config_stack

    stack = load_config_to_kv_config_stack({"cpuThreadPoolSize": 2}, sdk.LlmLoadModelConfig)
    assert [f for layer in stack.layers for f in layer.config.fields] == []
