"""The daemon's own slow waits, in one place, and the one knob that shrinks them for tests.

Each is a compromise for a real home (a device is not tried a hundred times a second; a device
call is not called stuck while it may still return). A test that waits for one of them would wait
as long, so the test suite sets HERALD_TIME_SCALE (a factor between 0.05 and 1; 1 when unset or
unusable) and runs every daemon, and its own expectations, with the shorter waits. Nothing else
should set it. Like websockets' MS for its own tests, but for a daemon the tests start as a
process.
"""

from __future__ import annotations

import math
import os

SCALE_VARIABLE = "HERALD_TIME_SCALE"


def time_scale(value: str | None) -> float:
    """The factor HERALD_TIME_SCALE asks for; 1 when unset or not a number in [0.05, 1]."""
    try:
        scale = float(value) if value else 1.0
    except ValueError:
        return 1.0
    return scale if math.isfinite(scale) and 0.05 <= scale <= 1.0 else 1.0


SCALE = time_scale(os.environ.get(SCALE_VARIABLE))

# How often a missing audio device is tried again (at start-up, and by an announcement that
# waits for it).
AUDIO_RETRY_S = 5.0 * SCALE
# A call into the audio device (or the buffer playing out) that makes no progress for this long
# is hung. A write blocks for about a period (the first after a start on a PulseAudio null sink,
# about 2 s), the buffer plays out in 80 ms: this is far beyond, yet well inside WatchdogSec.
HANG_AFTER_S = 10.0 * SCALE
# How often the daemon looks for something stuck when systemd's watchdog is off.
HEALTH_CHECK_S = 5.0 * SCALE
