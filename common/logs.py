"""Logging set-up, called only from the processes' entry points."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else os.environ.get("TICKVAULT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )
    # websockets logs every connection at INFO; keep ours readable.
    logging.getLogger("websockets").setLevel(logging.WARNING)
