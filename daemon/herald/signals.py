"""SIGTERM/SIGINT (stop) and SIGHUP (reload), heard within a turn of the loop however busy it is.

asyncio's own `add_signal_handler` learns of a signal from a byte in the loop's self-pipe, the
same pipe every `call_soon_threadsafe` writes a byte to. A burst of work from other threads
(thousands of MQTT messages) fills that pipe, the signal's byte is dropped ("Exception ignored
when trying to write to the signal wakeup fd: BlockingIOError") and the signal is lost: the
daemon ran on for minutes after SIGTERM, until systemd killed it.

Here the signals have a socket pair of their own, which nothing else writes to (it would take
some two hundred unread signals to fill it); the Python handler also notes each signal, and the
reader acts on what was noted as well as on the bytes it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from dataclasses import dataclass, field
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)


@dataclass
class Signals:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reload: asyncio.Event = field(default_factory=asyncio.Event)
    _noted: set[int] = field(default_factory=set)
    _keep: tuple[socket.socket, ...] = ()

    @classmethod
    def install(cls) -> Signals:
        """Take over SIGTERM, SIGINT and SIGHUP for the running loop (main thread only)."""
        signals = cls()
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair()
        for end in (reader, writer):
            end.setblocking(False)
        # Wakes the loop from its wait on any thread's behalf; the numbers written are read back.
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        loop.add_reader(reader.fileno(), signals._woken, reader)
        signals._keep = (reader, writer)  # alive as long as the handlers are
        for signum in (*STOP_SIGNALS, *RELOAD_SIGNALS):
            signal.signal(signum, signals._note)
        return signals

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        """The Python handler: runs in the main thread between two bytecodes of whatever the
        loop is doing, so it only notes; the reader acts, in its own turn of the loop."""
        self._noted.add(signum)

    def _woken(self, reader: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while data := reader.recv(4096):
                self._noted.update(data)
        self._act()

    def _act(self) -> None:
        noted, self._noted = self._noted, set()
        if noted & set(STOP_SIGNALS):
            self.stop.set()
        if noted & set(RELOAD_SIGNALS):
            self.reload.set()

    async def either(self) -> None:
        """Until a stop or a reload is asked for."""
        waits = [asyncio.create_task(event.wait()) for event in (self.stop, self.reload)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
