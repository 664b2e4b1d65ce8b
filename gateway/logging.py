"""Structured logs: one JSON object a line, each carrying the request id of its work."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from services.infra.request_context import current_request_id

_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: object, **kwargs: object) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)  # type: ignore[arg-type]
    record.request_id = current_request_id()
    return record


def install_request_id() -> None:
    """Every log record, whichever handler takes it, carries the request id of its work."""
    logging.setLogRecordFactory(_record_with_request_id)


class DropClientDisconnects(logging.Filter):
    """strawberry logs a traceback for each subscription whose client went away mid-send: a
    normal end of a WebSocket, not an error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ not in ("WebSocketDisconnected", "WebSocketDisconnect")


def wants_json(setting: str | bool) -> bool:
    """`TRADEQL_LOG_JSON`: true, false, or auto (JSON for log collectors, readable lines for a
    person at a terminal)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return not sys.stderr.isatty()
    return setting == "true"


def configure_logging(level: str = "INFO", *, json_lines: str | bool = "auto") -> None:
    install_request_id()
    handler = logging.StreamHandler(sys.stderr)
    if wants_json(json_lines):
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("strawberry.ws.task").addFilter(DropClientDisconnects())
    for noisy in ("uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
