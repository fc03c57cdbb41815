"""synth's own lines on the terminal: the handler `cli._setup_logging` installs on the
"synth" logger (marked `synth_terminal`) and the records that skip it."""

from __future__ import annotations

import logging
from typing import Any

# A log record with this attribute set goes to build.log only, not to the terminal (the progress
# line, while a live bar shows the same on the terminal).
FILE_ONLY = "synth_file_only"


def terminal_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger("synth").handlers if getattr(h, "synth_terminal", False)), None)


def terminal_stream() -> Any:
    """The stream synth's own log lines go to, or None."""
    return getattr(terminal_handler(), "stream", None)
