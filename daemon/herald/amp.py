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
    def __init__(self, cfg: AmpConfig) -> None:
        self._cfg = cfg
        self.on = False
        self._off_later: asyncio.TimerHandle | None = None
        self._switching: asyncio.Task[None] | None = None

    async def power_on(self) -> None:
        """Make sure it is on, and warm: returns once sound may play."""
        self._cancel_off()
        if self.on or not self._cfg.enabled:
            return
        await self._run(self._cfg.on_command, "on")
        self.on = True  # (even if the command failed: it is not tried before every sound)
        await asyncio.sleep(self._cfg.warmup_ms / 1000)

    def idle(self) -> None:
        """Nothing plays now: switch off after `hold_s`, unless a sound comes first."""
        if not self.on or not self._cfg.enabled or self._off_later is not None:
            return
        loop = asyncio.get_running_loop()
        self._off_later = loop.call_later(self._cfg.hold_s, self._switch_off)

    async def close(self) -> None:
        """Herald stops (or reloads): switch it off now."""
        self._cancel_off()
        if self._switching is not None:
            await self._switching
        if self.on and self._cfg.enabled:
            self.on = False
            await self._run(self._cfg.off_command, "off")

    def _cancel_off(self) -> None:
        if self._off_later is not None:
            self._off_later.cancel()
            self._off_later = None

    def _switch_off(self) -> None:
        self._off_later = None
        self.on = False
        self._switching = asyncio.create_task(self._run(self._cfg.off_command, "off"))

    async def _run(self, argv: list[str], what: str) -> None:
        if not argv:
            return
        if self._switching is not None and what == "on":
            await self._switching  # an "off" still running finishes first
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
            async with asyncio.timeout(self._cfg.command_timeout_s):
                _, err = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log.warning(
                "amp: %s (switching %s) took over %.0f s and was stopped",
                name,
                what,
                self._cfg.command_timeout_s,
            )
            return
        if process.returncode:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            said = f": {shown(lines[-1], 200)}" if lines else ""
            log.warning(
                "amp: %s (switching %s) exited with %d%s", name, what, process.returncode, said
            )
        else:
            log.info("amp: switched %s", what)
