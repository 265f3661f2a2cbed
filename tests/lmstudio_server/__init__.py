"""A test server that speaks LM Studio's websocket protocol and runs a real GGUF model."""

from lmstudio_server.server import LMSError, LMStudioTestServer, ServerModel

__all__ = ["LMSError", "LMStudioTestServer", "ServerModel"]
