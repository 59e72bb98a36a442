"""The amplifier's power: switched on before the first sound, off after a while of silence.

An amplifier behind a relay or an enable pin (a HAT's mute line, a smart plug) takes a moment
to come up, and whatever plays before that is lost. `amp.on_command` runs before the first
sound after the amplifier was off; the chime and the voice wait `amp.warmup_ms` more. After
`amp.hold_s` without sound, `amp.off_command` runs. Between announcements that follow each
other, or when one preempts another, the amplifier stays on.

The commands are argument lists, run without a shell; each gets `command_timeout_s`. One that
fails is logged (one line) and Herald speaks anyway: a missing amplifier switch must not
silence a working speaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from herald.config import AmpConfig
from herald.logsafe import shown

log = logging.getLogger(__name__)


class Amplifier:
    """Switches run one at a time, in order, each to its end: cancelling the announcement that
    asked for one (a preemption, a stop) never stops a switch halfway, and the amplifier counts
    as on from the moment its switch-on starts, so a switch-off always follows."""

    def __init__(self, cfg: AmpConfig) -> None:
        self.cfg = cfg
        self.on = False
        self._off_later: asyncio.TimerHandle | None = None
        self._switching: asyncio.Task[None] | None = None  # the last switch asked for

    async def power_on(self) -> None:
        """Make sure it is on, and warm: returns once sound may play."""
        self._cancel_off()
        if self.on or not self.cfg.enabled:
            return
        self.on = True  # (even if the command fails: it is not tried before every sound)
        await asyncio.shield(self._switch(self.cfg.on_command, "on"))
        await asyncio.sleep(self.cfg.warmup_ms / 1000)

    def idle(self) -> None:
        """Nothing plays now: switch off after `hold_s`, unless a sound comes first."""
        if not self.on or not self.cfg.enabled or self._off_later is not None:
            return
        loop = asyncio.get_running_loop()
        self._off_later = loop.call_later(self.cfg.hold_s, self._switch_off)

    async def close(self) -> None:
        """Herald stops (or its amplifier settings change): switch it off now."""
        self._cancel_off()
        if self.on and self.cfg.enabled:
            self.on = False
            self._switch(self.cfg.off_command, "off")
        if self._switching is not None:
            await asyncio.wait([self._switching])

    def _cancel_off(self) -> None:
        if self._off_later is not None:
            self._off_later.cancel()
            self._off_later = None

    def _switch_off(self) -> None:
        self._off_later = None
        self.on = False
        self._switch(self.cfg.off_command, "off")

    def _switch(self, argv: list[str], what: str) -> asyncio.Task[None]:
        """Run a switch after the one before it has finished; a task nobody's cancel reaches."""
        previous = self._switching

        async def in_turn() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await self._run(argv, what)

        self._switching = asyncio.create_task(in_turn(), name=f"amp-{what}")
        return self._switching

    async def _run(self, argv: list[str], what: str) -> None:
        if not argv:
            return
        name = shown(argv[0], 200)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("amp: cannot switch the amplifier %s: %s: %s", what, name, exc.strerror)
            return
        try:
            async with asyncio.timeout(self.cfg.command_timeout_s):
                said = await _last_line(process)
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log.warning(
                "amp: %s (switching %s) took over %.0f s and was stopped",
                name,
                what,
                self.cfg.command_timeout_s,
            )
            return
        if process.returncode:
            shown_said = f": {shown(said, 200)}" if said else ""
            log.warning(
                "amp: %s (switching %s) exited with %d%s",
                name,
                what,
                process.returncode,
                shown_said,
            )
        else:
            log.info("amp: switched %s", what)


async def _last_line(process: asyncio.subprocess.Process) -> str:
    """The last line a command wrote to stderr, read to its end but kept short (a command
    that writes megabytes costs a few KiB)."""
    assert process.stderr is not None
    tail = b""
    while chunk := await process.stderr.read(4096):
        tail = (tail + chunk)[-1024:]
    lines = tail.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""
