"""GET /openapi.json: the OpenAPI 3 document, built from the Marshmallow schemas that validate requests.

A view states what it takes and returns with @documented(...); build_spec walks the app's URL
map, so every route is in the document, a blueprint added later included (static files, and views
marked @undocumented such as the chat page, are left out).
"""

import copy
import re
from dataclasses import dataclass, field

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, validate

from app import protocol
from app.version import __version__

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
# Statuses every operation can answer with the error envelope (401 and 429 only when keys or
# limits apply, 503 while loading or draining).
COMMON_ERRORS = {
    "401": "Missing or wrong API key (when API keys are configured).",
    "405": "Method not allowed on this path.",
    "429": "Rate limit or concurrency limit reached; see Retry-After.",
    "500": "Server or engine error.",
    "503": "The engine is loading or the server is draining; see Retry-After.",
}
BODY_ERRORS = {
    "400": "Invalid request: `param` names the field.",
    "404": "Unknown model.",
    "413": "Request body too large.",
    "415": "Body is not JSON.",
}


@dataclass
class Operation:
    """What @documented records on a view."""

    summary: str
    request: type[Schema] | None = None
    response: type[Schema] | dict | None = None
    stream: type[Schema] | None = None
    text: str | None = None
    responses: dict = field(default_factory=dict)
    tags: tuple = ()


def documented(summary: str, request: type[Schema] | None = None, response: type[Schema] | dict | None = None,
               stream: type[Schema] | None = None, text: str | None = None, responses: dict | None = None,
               tags: tuple = ()):
    """Describe a view for /openapi.json.

    request: the JSON body's schema; response: the 200 JSON body's schema (or a JSON Schema
    dict); stream: the schema of each SSE event when the client asks to stream; text: a
    non-JSON media type the 200 body has instead; responses adds or overrides statuses:
    {"503": (description, schema or None)}. Every operation also gets the error envelope.
    """
    def attach(view):
        view.openapi = Operation(summary, request, response, stream, text, responses or {}, tags)
        return view
    return attach


def undocumented(view):
    """Leave a view out of /openapi.json (a page for browsers, not part of the API)."""
    view.openapi_hidden = True
    return view


def _field_schema(self, field, **kwargs) -> dict:
    """apispec attribute function: JSON Schema for our own field types, defaults, exclusive ranges."""
    result = copy.deepcopy(getattr(field, "json_schema", None) or {})
    defaults = getattr(field.parent, "DEFAULTS", {}) if field.parent is not None else {}
    if field.name in defaults:
        default = defaults[field.name]
        result["default"] = list(default) if isinstance(default, tuple) else default
    for validator in field.validators:
        if isinstance(validator, validate.Range):
            if validator.min is not None and not validator.min_inclusive:
                result["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                result["exclusiveMaximum"] = True
    return result


def _schema_name(schema) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema")


def _error_responses(method: str) -> dict:
    errors = dict(COMMON_ERRORS)
    if method == "post":
        errors.update(BODY_ERRORS)
    return {status: {"description": text, "content": {JSON: {"schema": protocol.ErrorResponseSchema}}}
            for status, text in sorted(errors.items())}


def _operation(method: str, endpoint: str, view) -> dict:
    op: Operation | None = getattr(view, "openapi", None)
    if op is None:
        # A route nobody described still appears, with what every route may answer.
        return {"summary": endpoint, "responses": {"200": {"description": "OK"}, **_error_responses(method)}}
    ok = {"description": "OK", "content": {}}
    if op.response is not None:
        ok["content"][JSON] = {"schema": op.response}
    if op.text is not None:
        ok["content"][op.text] = {"schema": {"type": "string"}}
    if op.stream is not None:
        # The schema of one event, as OpenAPI 3.2 reads an event stream's schema (and schemathesis
        # validates each event against it): its `data` field; a string type for the whole body
        # fails every event.
        ok["content"][EVENT_STREAM] = {"schema": {
            "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
            "description": getattr(op.stream, "sse_description", None) or
                           f"Server-Sent Events: `data: <{_schema_name(op.stream)}>` per chunk, "
                           "then `data: [DONE]`; `: keep-alive` comments while waiting.",
        }}
    if not ok["content"]:
        del ok["content"]
    responses = {"200": ok, **_error_responses(method)}
    for status, (text, schema) in op.responses.items():
        responses[status] = {"description": text}
        if schema is not None:
            responses[status]["content"] = {JSON: {"schema": schema}}
    result = {"summary": op.summary, "operationId": endpoint.replace(".", "_"), "responses": responses}
    if op.tags:
        result["tags"] = list(op.tags)
    if op.request is not None:
        result["requestBody"] = {"required": True, "content": {JSON: {"schema": op.request}}}
    return result


def build_spec(app) -> dict:
    """The OpenAPI document of app: every route, its schemas, the error envelope, the server's limits."""
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="vllm-flask-server", version=__version__, openapi_version=OPENAPI_VERSION, plugins=[plugin],
        info={"description": "An OpenAI-compatible LLM server: Flask, gunicorn + gevent, one vLLM engine."},
    )
    plugin.converter.add_attribute_function(_field_schema)
    # Stream chunks appear only in descriptions; list them as components so clients can use them.
    stream_schemas = {op.stream for op in _operations(app) if op.stream is not None}
    for schema in sorted(stream_schemas, key=_schema_name):
        if _schema_name(schema) not in spec.components.schemas:
            spec.components.schema(_schema_name(schema), schema=schema)
    if app.config.get("API_KEYS") or app.config.get("API_KEYS_FILE"):
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
        spec.options["security"] = [{"bearer": []}]

    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        if rule.endpoint == "static" or rule.endpoint.endswith(".static") or getattr(view, "openapi_hidden", False):
            continue
        path = _openapi_path(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = _operation(method.lower(), rule.endpoint, view)
            if rule.arguments:
                operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                           for name in sorted(rule.arguments)]
            paths.setdefault(path, {})[method.lower()] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _apply_schema_rules(document, {op.request for op in _operations(app) if op.request is not None})
    _apply_server_limits(document, app)
    return document


def _operations(app) -> list[Operation]:
    """What @documented recorded on each of app's views."""
    return [view.openapi for view in app.view_functions.values() if getattr(view, "openapi", None) is not None]


def _openapi_path(rule: str) -> str:
    """Flask's /things/<int:id> as OpenAPI's /things/{id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _apply_server_limits(document: dict, app) -> None:
    """Limits that come from settings and the loaded model, not from the schemas' code."""
    schemas = document["components"]["schemas"]
    bridge = app.extensions["engine_bridge"]
    max_output = app.config["MAX_OUTPUT_TOKENS"]
    models = [bridge.model_name, *bridge.adapter_names]
    for name in ("ChatCompletionRequest", "CompletionRequest", "ResponseRequest", "TokenizeRequest",
                 "DetokenizeRequest"):
        properties = schemas.get(name, {}).get("properties", {})
        if "model" in properties:
            nullable = properties["model"].get("nullable", False)
            properties["model"]["enum"] = [*models, None] if nullable else models
        for limited in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            if limited in properties:
                properties[limited]["maximum"] = max_output
    vocab_size = _vocab_size(bridge)
    if vocab_size:
        for token_ids in (schemas["CompletionRequest"]["properties"]["prompt"], schemas["DetokenizeRequest"]):
            _limit_token_ids(token_ids, vocab_size - 1)


def _vocab_size(bridge) -> int | None:
    try:
        return bridge.vocab_size
    except Exception:  # still loading: the document then leaves token ids unbounded above
        return None


def _limit_token_ids(node, maximum: int) -> None:
    """Set maximum on every {"type": "integer", "minimum": 0} under node (the token id items)."""
    if isinstance(node, dict):
        if node.get("type") == "integer" and node.get("minimum") == 0 and "maximum" not in node:
            node["maximum"] = maximum
        for child in node.values():
            _limit_token_ids(child, maximum)
    elif isinstance(node, list):
        for child in node:
            _limit_token_ids(child, maximum)


def _apply_schema_rules(document: dict, schema_classes) -> None:
    """Rules across fields that a schema class states in `json_schema_rules` (e.g. prompt xor messages)."""
    for cls in schema_classes:
        rules = getattr(cls, "json_schema_rules", None)
        name = _schema_name(cls)
        if rules and name in document["components"]["schemas"]:
            document["components"]["schemas"][name].update(rules)
