"""Threads, queues and vLLM: everything between a request and the LLMEngine. No Flask in here."""

import logging

from engine_bridge.bridge import EngineBridge, EngineState, GenerationStream
from engine_bridge.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineFailed,
    EngineNotReady,
    GenerationInterrupted,
    RequestRejected,
)
from engine_bridge.settings import EngineSettings
from engine_bridge.tool_calls import MessageDelta, ToolCall, ToolCallDelta, ToolCalling, ToolCallParser
from engine_bridge.types import ChoiceDelta, GenerationUpdate, SamplingOptions, TokenLogprob

__all__ = [
    "ChoiceDelta",
    "ContextLengthExceeded",
    "EngineBridge",
    "EngineError",
    "EngineFailed",
    "EngineNotReady",
    "EngineSettings",
    "EngineState",
    "GenerationStream",
    "GenerationInterrupted",
    "GenerationUpdate",
    "MessageDelta",
    "RequestRejected",
    "SamplingOptions",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolCalling",
    "init_app",
    "install",
    "installed",
]

log = logging.getLogger(__name__)

# The bridge this process loaded before the app existed (gunicorn's post_fork), if any.
_installed: EngineBridge | None = None

EXTENSION_KEY = "engine_bridge"


def install(bridge: EngineBridge) -> None:
    """Make bridge the one that init_app hands to the next app created in this process."""
    global _installed
    _installed = bridge


def init_app(app, bridge: EngineBridge | None = None) -> EngineBridge:
    """Attach an engine bridge to app.extensions: the one given, the installed one, or a new one.

    A new bridge starts loading in the background, so the app answers /health with 503 until
    the engine is ready.
    """
    if bridge is None:
        bridge = _installed
    if bridge is None:
        bridge = EngineBridge(EngineSettings.from_env())
        bridge.load_in_background()
    app.extensions[EXTENSION_KEY] = bridge
    return bridge


def installed() -> EngineBridge | None:
    """The bridge install() registered in this process, if any."""
    return _installed
