"""A request body as JSON: every way its bytes can be hostile becomes a 400, never a 500."""

import json
import math

from app.errors import APIError

# Deeper than any OpenAI request needs (a response_format JSON schema included); deeper input is
# refused before it reaches code that recurses over it (Marshmallow, vLLM's grammar compiler).
MAX_DEPTH = 64
# Larger bodies are parsed in an offload thread, off the gevent hub (routes.helpers).
INLINE_PARSE_BYTES = 64 * 1024

_PARSE_HINT = ("(HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API "
               "expects a JSON payload.)")


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NotFinite(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite("a number is too large")
    return value


def parse_json_body(data: bytes):
    """The JSON value in data; raises APIError (400) for anything that is not clean JSON."""
    if not data.strip():
        raise APIError(f"The request body is empty. {_PARSE_HINT}")
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise APIError(f"The JSON body is nested more than {MAX_DEPTH} levels deep.") from None
    except _NotFinite as exc:
        raise APIError(f"We could not parse the JSON body of your request: {exc} (NaN, Infinity and "
                       "numbers out of the double range are not valid).") from None
    except UnicodeDecodeError:
        raise APIError("We could not parse the JSON body of your request: it is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise APIError(f"We could not parse the JSON body of your request: {exc.msg} at line "
                       f"{exc.lineno}, column {exc.colno}. {_PARSE_HINT}") from None
    except ValueError:  # an integer with more digits than Python converts
        raise APIError("We could not parse the JSON body of your request: a number has too many digits.") from None
    _check_tree(value)
    return value


def _path(trail) -> str:
    """messages[0].content from the (parent, key) trail of a value."""
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
    return path


def _check_string(text: str, trail) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        path = _path(trail)
        raise APIError(f"Invalid Unicode in {path or 'the body'}: an escape such as \\ud800 encodes half "
                       "of a surrogate pair, which is not a character.", param=path or None) from None


def _check_tree(value) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings with lone surrogates (valid JSON escapes,
    but no Unicode text: they fail later in encoders and tokenizers)."""
    if isinstance(value, str):
        _check_string(value, None)
    stack = [(value, None, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, trail, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(f"The JSON body is nested more than {MAX_DEPTH} levels deep.", param=_path(trail) or None)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(key, str):
                _check_string(key, trail)
            if isinstance(child, str):
                _check_string(child, (trail, key))
            elif isinstance(child, (dict, list)):
                stack.append((child, (trail, key), depth + 1))
