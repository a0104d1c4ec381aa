"""Log level for the twistd processes: twistd prints every event, debug included, so
each role installs an observer that drops events below ``--log-level``."""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LEVELS = {level.name: level for level in LogLevel.iterconstants()}


def leveled_observer(level: LogLevel, logfile: str | None) -> ILogObserver:
    """Text lines to ``logfile`` (stdout when None or ``-``) for events at ``level`` or above."""
    out: Any = sys.stdout if logfile in (None, "-") else LogFile.fromFullPath(logfile)
    return FilteringLogObserver(textFileLogObserver(out), [LogLevelFilterPredicate(defaultLogLevel=level)])


# What install_level chose for this process; twistd imports the factory by name.
_chosen: dict[str, Any] = {"level": LogLevel.info, "logfile": None}


def debug_enabled() -> bool:
    """Will debug events be printed? Lines on a per-request path check first: building an
    event that the observer then drops cost ~5% of a frontend's cache hits."""
    return bool(_chosen["level"] <= LogLevel.debug)


def twistd_observer() -> ILogObserver:
    """The factory twistd's ``--logger`` names."""
    return leveled_observer(_chosen["level"], _chosen["logfile"])


def install_level(twistd_options: Any, level_name: str) -> None:
    """Make twistd log through :func:`twistd_observer`, unless the user chose ``--logger``."""
    if twistd_options is None or twistd_options.get("logger"):
        return
    _chosen.update(level=LEVELS[level_name], logfile=twistd_options.get("logfile"))
    twistd_options["logger"] = f"{__name__}.twistd_observer"
