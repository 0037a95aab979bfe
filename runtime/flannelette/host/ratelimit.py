"""Warnings about dropped packets, at most a few per reason per interval, then a summary."""

from __future__ import annotations

import logging
from typing import Dict

log = logging.getLogger("flannelette.host.datapath.loop")

# At most this many warnings per reason per interval, then one line counting the rest.
WARN_BURST, WARN_INTERVAL = 5, 60.0


class RateLimitedLog:
    """Warn about dropped packets without letting a flood of them flood the journal."""

    def __init__(self, clock, burst: int = WARN_BURST, interval: float = WARN_INTERVAL):
        self.clock, self.burst, self.interval = clock, burst, interval
        self.windows: Dict[str, list] = {}  # reason -> [window start, logged, suppressed]

    def warn(self, reason: str, message: str, *args) -> None:
        now = self.clock()
        window = self.windows.get(reason)
        if window is None or now - window[0] >= self.interval:
            if window and window[2]:
                log.warning("%d more packets dropped (%s) in the last %.0fs", window[2], reason, now - window[0])
            window = self.windows[reason] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            log.warning("dropped (%s): " + message, reason, *args)
        else:
            window[2] += 1
