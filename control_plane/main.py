"""``corral-control-plane``: read settings once, configure logs, serve the API with uvicorn."""

from __future__ import annotations

import logging
import os
import sys

import structlog
import uvicorn

from control_plane.api import create_app
from control_plane.settings import SettingsError, load_settings


def configure_logging() -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def main() -> None:
    configure_logging()
    try:
        settings = load_settings(os.environ)
    except SettingsError as e:
        print(f"corral-control-plane: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
