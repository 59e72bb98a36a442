"""The system clock's synchronization, as the kernel knows it (adjtimex(2), read-only).

An NTP client (chrony, systemd-timesyncd, ntpd) tells the kernel when it has set the clock:
it clears STA_UNSYNC, and chrony and ntpd also keep the estimated and maximum error there.
systemd-timesyncd leaves the estimated error at 0: Herald then knows the clock is synchronized
but not how well (docs/rooms.md). Reading needs no privilege (modes = 0 changes nothing).
"""

from __future__ import annotations

import ctypes
import logging

from herald.sync import ClockState

log = logging.getLogger(__name__)

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (the kernel's layout on every Linux ABI Herald runs on)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def read_clock() -> ClockState | None:
    """The clock's state now; None when the kernel cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()  # modes 0: only read
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError) as exc:
        log.debug("clock: adjtimex is not available: %s", exc)
        return None
    if state < 0:
        log.debug("clock: adjtimex failed: errno %d", ctypes.get_errno())
        return None
    return clock_state(state, timex.status, timex.esterror, timex.maxerror)


def clock_state(state: int, status: int, esterror_us: int, maxerror_us: int) -> ClockState:
    """What adjtimex's answer means (its return value, status bits and errors in µs)."""
    synchronized = state != _TIME_ERROR and not status & _STA_UNSYNC
    return ClockState(
        synchronized=synchronized,
        estimated_error_s=esterror_us / 1e6 if esterror_us > 0 else None,
        maximum_error_s=maxerror_us / 1e6 if maxerror_us > 0 else None,
    )


def describe(state: ClockState | None) -> str:
    """One line for `herald check`."""
    if state is None:
        return "cannot be read (adjtimex)"
    if not state.synchronized:
        return "not synchronized"
    if state.estimated_error_s is None:
        return "synchronized (the NTP client gives no error estimate)"
    text = f"synchronized, estimated error {state.estimated_error_s * 1000:.2f} ms"
    if state.maximum_error_s is not None:
        text += f", at most {state.maximum_error_s * 1000:.0f} ms"
    return text
