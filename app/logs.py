"""Log format for the whole process: ours, gunicorn's and vLLM's lines alike.

LOG_FORMAT=json gives one JSON object per line (for log pipelines); text gives
"[time] [pid] [LEVEL] logger: message key=value ..." for people. The default, auto, is text
when stderr is a terminal and JSON otherwise (systemd, containers, files).
"""

import json
import logging
import os
import sys
from datetime import datetime, timezone

FORMATS = ("auto", "json", "text")

# Unicode line breaks that JSON strings may hold raw, written as escapes instead.
_LINE_BREAKS_ESCAPED = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's `fields` extra becomes top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # JSON leaves these three unescaped, but Python's splitlines() and many log shippers end a
        # line at them: a client's path or header holding one would split the record in two.
        return json.dumps(entry, default=str, ensure_ascii=False).translate(_LINE_BREAKS_ESCAPED)


class TextFormatter(logging.Formatter):
    """gunicorn's look, with a record's `fields` extra appended as key=value."""

    def __init__(self):
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S %z")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in (getattr(record, "fields", None) or {}).items() if k != "event"}
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def resolve_format(name: str | None = None) -> str:
    """json or text, from name or LOG_FORMAT (auto: text on a terminal, else JSON)."""
    name = (name or os.environ.get("LOG_FORMAT") or "auto").lower()
    if name not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {name!r}")
    if name == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return name


def logging_config(log_format: str | None = None, level: str | None = None, access_log: bool = False) -> dict:
    """A logging.config.dictConfig for the root logger and gunicorn's two loggers.

    gunicorn's error logger (and its access logger, if access_log) propagate to the root
    handler instead of keeping their own; vLLM's logger does too once VLLM_CONFIGURE_LOGGING=0
    (set here), and Python warnings become log records, so every line has the same format.
    In JSON, tqdm's progress bars (vLLM's weight loading) are turned off: they are not lines.
    """
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    log_format = resolve_format(log_format)
    if log_format == "json":
        os.environ.setdefault("TQDM_DISABLE", "1")
    logging.captureWarnings(True)
    level = (level or os.environ.get("LOG_LEVEL") or "info").upper()
    formatter = {"()": f"{__name__}.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            # gunicorn logs its access line at INFO; WARNING and no propagation silence it.
            "gunicorn.access": {"level": "INFO" if access_log else "WARNING", "handlers": [],
                                "propagate": access_log},
        },
    }

