"""The few places sweeper reaches past the lmstudio SDK's (1.5.0, pinned) public API.

The SDK drops keys it does not know, and cannot express some load keys (CPU threads, the
physical batch, the MoE expert layers) nor a model's custom fields (gpt-oss's reasoning effort).
These helpers add raw KV fields to the config stack the SDK builds, and read back what LM Studio
applied. They touch SDK internals, so they live here, pinned and tested against the protocol
test server (tests/lmstudio_server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sweeper.errors import LoadError

if TYPE_CHECKING:
    import lmstudio


def check_encoded(config: dict[str, Any], expected: set[str]) -> None:
    """Fail where the SDK's typed config would silently drop a key we mean to send."""
    from lmstudio._kv_config import load_config_to_kv_config_stack
    from lmstudio._sdk_models import LlmLoadModelConfig

    stack = load_config_to_kv_config_stack(config, LlmLoadModelConfig)
    sent = {f.key for layer in stack.layers for f in layer.config.fields}
    missing = expected - sent
    if missing:
        raise LoadError("unsupported", f"the lmstudio SDK did not encode {sorted(missing)}")


def load_with_raw_fields(
    client: lmstudio.Client,
    model_key: str,
    identifier: str,
    config: dict[str, Any],
    raw: dict[str, Any],
    on_progress: Any = None,
) -> Any:
    """``load_new_instance`` plus raw KV fields the SDK's typed config cannot express.

    Touches SDK 1.5.0 internals (LoadModelEndpoint's creation parameters); pinned and tested
    against the protocol test server.
    """
    from lmstudio._sdk_models import LlmChannelLoadModelCreationParameter, LlmLoadModelConfig
    from lmstudio.json_api import LoadModelEndpoint

    endpoint = LoadModelEndpoint(
        model_key,
        identifier,
        None,
        LlmChannelLoadModelCreationParameter,
        LlmLoadModelConfig,
        cast(Any, config),
        on_progress,
    )
    # SDK 1.5.0 always builds one "apiOverride" layer (empty for an empty config).
    layers: Any = endpoint.creation_params["loadConfigStack"]["layers"]
    layers[0]["config"]["fields"].extend({"key": k, "value": v} for k, v in raw.items())
    with client.llm._create_channel(endpoint) as channel:
        result = channel.wait_for_result()
    return client.llm._create_handle(result.identifier)


def raw_load_config(client: lmstudio.Client, identifier: str) -> dict[str, Any]:
    """The applied load config as wire key -> value, raw keys included (``get_load_config``
    drops keys the SDK does not know)."""
    from lmstudio._sdk_models import LlmRpcGetLoadConfigParameter

    params = LlmRpcGetLoadConfigParameter._from_api_dict(
        {"specifier": {"type": "query", "query": {"identifier": identifier}}}
    )
    reply = client.llm.remote_call("getLoadConfig", params)
    return {f["key"]: f["value"] for f in reply.get("fields", [])}


def app_version(client: lmstudio.Client) -> str | None:
    """LM Studio's own version (the ``system`` namespace's ``version`` RPC, which the SDK has
    a schema for but no method), e.g. ``0.4.21 (build 2)``; None when it does not say."""
    reply = client.system.remote_call("version")
    if not isinstance(reply, dict) or not reply.get("version"):
        return None
    build = reply.get("build")
    return (
        f"{reply['version']} (build {int(build)})" if build is not None else str(reply["version"])
    )


def respond_stream_with_raw_fields(
    model: Any, chat: Any, config: dict[str, Any], raw: dict[str, Any]
) -> Any:
    """``model.respond_stream(chat, config=config)`` plus raw prediction KV fields (a model's
    custom fields, which the typed prediction config rejects)."""
    if not raw:
        return model.respond_stream(chat, config=config)
    from lmstudio.json_api import ChatResponseEndpoint
    from lmstudio.sync_api import PredictionStream

    endpoint = ChatResponseEndpoint(model.identifier, chat, None, cast(Any, config))
    layers: Any = endpoint.creation_params["predictionConfigStack"]["layers"]
    layers[0]["config"]["fields"].extend({"key": k, "value": v} for k, v in raw.items())
    session = model._session
    return PredictionStream(session._create_channel(endpoint), endpoint)
