"""The daemon's log output: text or JSON lines, to stderr or a size-rotated file.

Text is ``HH:MM:SS LEVEL logger: message`` on stderr (a file's lines carry the date too);
tracebacks follow on their own lines. JSON is one object per line, ready for Promtail and
``jq``: ``ts`` (UTC, RFC 3339 with milliseconds), ``level``, ``logger``, ``msg``, the node's
``node_id`` and ``node_name`` once known, every field a call passes with ``extra=``
(``log.info("stored", extra=fields("put_done", checkpoint=name, peer=peer))``), and ``exc``
with the traceback. docs/observability.md ("Logs") says where the lines go under each service manager.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
STDERR_DATEFMT = "%H:%M:%S"  # the journal adds its own dates
FILE_DATEFMT = "%Y-%m-%d %H:%M:%S"
MAX_FIELD_CHARS = 16 * 1024  # one field of a JSON line; the journal splits lines above 48 KiB
MAX_EXTRA_FIELDS = 32

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_context: dict[str, str] = {}


def fields(event: str, checkpoint: str | None = None, peer: str | None = None, **more: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call: ``event`` (a short snake_case name Promtail makes a label,
    like ``put_done`` or ``peer_dead``), the ``checkpoint`` (``NAME`` or ``NAME@V``) and the
    ``peer`` (a node id) it is about, and any other fields; None values are left out.

    A key a LogRecord already has (``name``, ``msg``, ``args``, ...) would make the log call
    raise, so it gets a trailing underscore (``name_``).
    """
    out: dict[str, Any] = {"event": event}
    if checkpoint is not None:
        out["checkpoint"] = checkpoint
    if peer is not None:
        out["peer"] = peer
    for key, value in more.items():
        if value is not None:
            out[key + "_" if key in _RECORD_ATTRS else key] = value
    return out


def set_context(**fields: str | None) -> None:
    """Fields every JSON line carries from now on (``node_id``, ``node_name``); None removes one."""
    for key, value in fields.items():
        if value is None:
            _context.pop(key, None)
        else:
            _context[key] = str(value)[:MAX_FIELD_CHARS]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "...(truncated)"


def _field(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return _clip(value.hex())
    return _clip(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": _clip(record.getMessage()),
        }
        out.update(_context)
        extras = 0
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_") or key in out:
                continue  # an extra never overwrites ts, level, logger, msg or the node fields
            if extras == MAX_EXTRA_FIELDS:
                break
            out[key] = _field(value)
            extras += 1
        if record.exc_info:
            out["exc"] = _clip(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = _clip(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False)


def make_handler(fmt: str = "text", file: Path | None = None, *, max_bytes: int = 10 * 1024 * 1024,
                 backups: int = 5, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``fmt`` lines to ``file`` (rotated at ``max_bytes``, keeping ``backups``
    older files: file.1 ... file.N) or, without a file, to ``stream`` (stderr).

    Creates the file's directory. Raises OSError when the file cannot be opened, ValueError
    for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    handler: logging.Handler
    if file is not None:
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=max(1, backups),
                                                       encoding="utf-8")
        datefmt = FILE_DATEFMT
    else:
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
        datefmt = STDERR_DATEFMT
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT, datefmt))
    return handler


def configure(level: str = "info", fmt: str = "text", file: Path | None = None, *, max_bytes: int = 10 * 1024 * 1024,
              backups: int = 5, node_name: str | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Send the process's log records to one handler (see make_handler), replacing the one a
    previous call installed; returns it. Raises OSError when ``file`` cannot be opened (the
    previous handler then stays)."""
    handler = make_handler(fmt, file, max_bytes=max_bytes, backups=backups, stream=stream)
    handler._peerstore = True  # type: ignore[attr-defined]  # ours to replace next time
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_peerstore", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    set_context(node_name=node_name)
    return handler
