"""create_app: the Flask application, its extensions, guards and blueprints."""

import logging
import time

from flask import Flask

import engine_bridge
from app import errors, guards, response_cache, telemetry
from app.concurrency import concurrency_limit
from app.config import Config
from app.routes import register_blueprints
from app.response_store import response_store
from app.serving import ChatServing, CompletionServing, TokenizationServing
from app.serving_responses import ResponsesServing


def create_app(config: dict | None = None) -> Flask:
    """Application factory: config overrides Config (e.g. {"ENGINE_BRIDGE": bridge} in tests)."""
    # No app-wide /static route: the chat page's blueprint serves its own folder, only when enabled.
    app = Flask("app", static_folder=None)
    app.config.from_object(Config)
    if config:
        app.config.update(config)
    app.json.sort_keys = False
    app.json.compact = True
    logging.getLogger("app").setLevel(logging.INFO)

    app.extensions["started_at"] = time.time()
    bridge = engine_bridge.init_app(app, app.config["ENGINE_BRIDGE"])
    concurrency = concurrency_limit(app.config)
    app.extensions["concurrency"] = concurrency
    app.extensions["serving_chat"] = ChatServing(bridge, app.config, concurrency)
    app.extensions["serving_completion"] = CompletionServing(bridge, app.config, concurrency)
    app.extensions["serving_tokenization"] = TokenizationServing(bridge)
    app.extensions["serving_responses"] = ResponsesServing(bridge, app.config, concurrency, response_store(app.config))

    # The observer goes on first: guards' ProxyFix then wraps it, so it sees the client's address.
    telemetry.init_app(app)
    response_cache.init_app(app)
    errors.init_app(app)
    guards.init_app(app)
    register_blueprints(app)
    return app
