"""systemd: readiness, status, watchdog and stopping notifications, and logging to the journal.

Uses systemd-python when it is installed (imported lazily); otherwise speaks the two documented
wire protocols itself (sd_notify datagrams to $NOTIFY_SOCKET, and journald's native protocol),
so the daemon behaves the same under systemd with or without it. Outside systemd every call is
a no-op and logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import ClassVar

from herald.timing import HEALTH_CHECK_S

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


class Notifier:
    """Sends sd_notify messages; a no-op when $NOTIFY_SOCKET is not set."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def active(self) -> bool:
        return self._socket is not None

    def send(self, *assignments: str) -> None:
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:  # systemd went away (or never was): nothing to tell
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def still_starting(self, status: str, for_s: float) -> None:
        """Start-up waits for something outside (the broker, a speaker not plugged in yet): ask
        for `for_s` more before systemd's start timeout gives up on us. A hung daemon stops
        asking, and is killed as before."""
        self.send(f"EXTEND_TIMEOUT_USEC={round(for_s * 1_000_000)}", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        # MONOTONIC_USEC tells systemd (253 and later) which reload this is.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd set for this process (WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


async def keep_watchdog_fed(
    notifier: Notifier,
    interval_s: float | None,
    status: Callable[[], str] | None = None,
    hung: Callable[[], str | None] | None = None,
) -> None:
    """Ping the watchdog from the event loop itself: if the loop hangs, the pings stop.

    A ping from a thread would keep a hung daemon alive; this one only runs when the loop turns.
    Each ping also refreshes the status line (ages and queue lengths change with time).

    `hung` says what is stuck outside the loop (the audio thread in a call into a device that
    never returns), or None when nothing is. While something is, the pings stop, so systemd
    restarts Herald, and the status line says why; one ERROR line says what is stuck, and if it
    comes unstuck before systemd acts, one line says so and the pings go on. Without a watchdog
    (`interval_s` None) only those lines are logged, checking every HEALTH_CHECK_S: nothing
    restarts Herald then, and it goes on as soon as the device does.
    """
    if interval_s is None and hung is None:
        return
    reported: str | None = None  # what was found stuck, while it is
    while True:
        problem = hung() if hung is not None else None
        if problem is not None and reported is None:
            if interval_s is None:
                consequence = "without systemd's watchdog nothing restarts Herald"
            else:
                consequence = "the watchdog is no longer fed, so systemd restarts Herald"
            log.error("%s; %s", problem, consequence)
        elif problem is None and reported is not None:
            log.warning(
                "not stuck any more (last seen: %s)%s",
                reported,
                "" if interval_s is None else "; the watchdog is fed again",
            )
        reported = problem
        if interval_s is None:
            await asyncio.sleep(HEALTH_CHECK_S)
            continue
        fields = [] if problem is not None else ["WATCHDOG=1"]
        if status is not None:
            fields.append(f"STATUS={status()}" + ("" if problem is None else f" · {problem}"))
        elif problem is not None:
            fields.append(f"STATUS={problem}")
        notifier.send(*fields)
        await asyncio.sleep(interval_s)


# --- logging ----------------------------------------------------------------------------------


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


class NativeJournalHandler(logging.Handler):
    """Sends records to journald with structured fields (its native datagram protocol).

    Fields: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, LOGGER, and every `extra` whose name is in
    upper case (e.g. ANNOUNCEMENT_ID, ANNOUNCEMENT_PRIORITY, VOICE).
    """

    _PRIORITIES: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def __init__(self, identifier: str = "herald", address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self._identifier = identifier
        self._address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "MESSAGE": self.format(record),
                "PRIORITY": str(self._PRIORITIES.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": self._identifier,
                "LOGGER": record.name,
                **{k: str(v) for k, v in record.__dict__.items() if k.isupper()},
            }
            self._socket.sendto(_journal_datagram(fields), self._address)
        except Exception:  # a logging failure must never take the daemon down
            self.handleError(record)


def _journal_datagram(fields: dict[str, str]) -> bytes:
    """journald's native format: KEY=value lines; a value with a newline is length-prefixed."""
    parts: list[bytes] = []
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def journal_handler() -> logging.Handler:
    """systemd-python's JournalHandler when installed, else the native one."""
    try:
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="herald")
    except ImportError:
        handler = NativeJournalHandler()
    return handler


def configure_logging(level: int) -> None:
    """Journal with structured fields under systemd; plain lines on stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if under_journald():
        with contextlib.suppress(OSError):
            handler = journal_handler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            root.addHandler(handler)
            return
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(stderr)
