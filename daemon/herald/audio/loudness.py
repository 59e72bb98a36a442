"""One loudness for everything heard: each chime and each voice brought to `audio.loudness_lufs`.

A chime is a whole sound: it is measured (BS.1770, `meter.py`) and its gain set exactly, once
per chime. So is a phrase from the cache. Streamed speech cannot be measured before it plays,
so each voice has a loudness learned from what it said before (kept in `state_dir`, by the
voice's identity: engine, model, speaker and speed, as the phrase cache names it), and its gain
comes from that. Until a voice has spoken, a prior stands in (espeak-ng's measured here; a
typical -20 LUFS for the cloud voices). After each announcement that voice spoke to its end,
the estimate moves towards what the meter read of it (most of the way after the first).
A peak limiter (`limiter.py`) keeps the true peak under `audio.true_peak_dbtp` whatever the
gain. The volume settings apply after all this, so `volume` keeps its meaning.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from herald.audio.dsp import Samples, silence
from herald.audio.limiter import PeakLimiter
from herald.audio.meter import Meter
from herald.logsafe import shown
from herald.statefile import StateFile

log = logging.getLogger(__name__)

MAX_BOOST_DB = 30.0  # a voice or chime far quieter than the target is raised this much at most
MAX_CUT_DB = 30.0
PRIORS_LUFS = {"espeak": -21.0}  # espeak-ng's default voice, measured (tests/test_loudness.py)
DEFAULT_PRIOR_LUFS = -20.0  # what streaming TTS services typically deliver
MIN_LEARN_S = 1.0  # an utterance shorter than this tells too little of a voice's loudness
FIRST_WEIGHT = 1.0  # the first measurement replaces the prior (a guess)
LATER_WEIGHT = 0.3  # and each one after that (speech varies from sentence to sentence)
MAX_VOICES_KEPT = 32
MAX_SOUNDS_MEASURED = 64  # chimes whose loudness is remembered
MAX_FILE_BYTES = 64 * 1024  # loudness.json (32 voices take about 3 KiB)


@dataclass(frozen=True)
class Target:
    """The loudness everything is brought to, and the true peak nothing goes above."""

    lufs: float = -18.0
    ceiling_dbtp: float = -1.0

    def gain_for(self, lufs: float | None) -> float:
        """The gain that brings a sound of `lufs` to the target (1.0 for silence)."""
        if lufs is None or not math.isfinite(lufs):
            return 1.0
        change = min(max(self.lufs - lufs, -MAX_CUT_DB), MAX_BOOST_DB)
        return float(10 ** (change / 20))


def voice_key(engine: str, identities: Mapping[str, str]) -> str:
    """What a voice's loudness is kept under: its engine and that engine's configured voice."""
    return f"{engine}: {identities.get(engine, '')}"


class VoiceLevels:
    """Each voice's loudness as learned from what it said, by voice identity; saved in a file."""

    def __init__(self, path: Path | None, save: bool = True) -> None:
        """`path`: where the learned loudness is read from (and kept, with `save`)."""
        self._file = None if path is None or not save else StateFile(path, "the voices' loudness")
        self._lufs: dict[str, float] = {}
        self._heard: dict[str, int] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with path.open("rb") as file:
                data = json.loads(file.read(MAX_FILE_BYTES + 1)[:MAX_FILE_BYTES])
            for identity, entry in list(dict(data["voices"]).items())[-MAX_VOICES_KEPT:]:
                lufs, heard = float(entry["lufs"]), int(entry["heard"])
                if math.isfinite(lufs) and -70 < lufs < 0 and heard > 0:
                    self._lufs[str(identity)], self._heard[str(identity)] = lufs, heard
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("loudness: cannot read %s: %s", path, exc.strerror or exc)
        except Exception as exc:  # anything in a damaged file: the voices are learned again
            log.warning(
                "loudness: ignoring %s (%s); the voices are learned again",
                path,
                shown(str(exc), 100),
            )
            self._lufs, self._heard = {}, {}

    def lufs(self, identity: str, engine: str) -> float:
        """What this voice is expected to measure: learned, or the engine's prior."""
        return self._lufs.get(identity, PRIORS_LUFS.get(engine, DEFAULT_PRIOR_LUFS))

    def heard(self, identity: str) -> int:
        return self._heard.get(identity, 0)

    def learn(self, identity: str, engine: str, measured: float) -> None:
        """One more announcement this voice spoke to its end, and what the meter read."""
        before = self.lufs(identity, engine)
        weight = LATER_WEIGHT if self.heard(identity) else FIRST_WEIGHT
        learned = before + weight * (measured - before)
        self._lufs.pop(identity, None)
        self._lufs[identity] = learned  # the most recently heard last: the oldest go first
        self._heard[identity] = self.heard(identity) + 1
        while len(self._lufs) > MAX_VOICES_KEPT:
            oldest = next(iter(self._lufs))
            del self._lufs[oldest], self._heard[oldest]
        level = logging.INFO if self._heard[identity] == 1 else logging.DEBUG  # news once
        log.log(level, "loudness: %s measured %.1f LUFS; taken as %.1f", engine, measured, learned)
        self._save()

    def _save(self) -> None:
        if self._file is None:
            return
        voices = {i: {"lufs": round(v, 2), "heard": self._heard[i]} for i, v in self._lufs.items()}
        self._file.write({"voices": voices})


class Loudness:
    """The loudness policy of a run: the target, what the voices are known to measure, and the
    identity of each engine's voice (its learned loudness is kept under it)."""

    def __init__(self, target: Target, levels: VoiceLevels, identities: Mapping[str, str]) -> None:
        self.target = target
        self.levels = levels
        self._identities = dict(identities)
        self._measured: OrderedDict[int, tuple[Samples, float | None]] = OrderedDict()

    def identity(self, engine: str) -> str:
        return voice_key(engine, self._identities)

    def loudness_of(self, samples: Samples, rate: int, remember: bool = False) -> float | None:
        """A whole sound's loudness. `remember`: the sound is played again as this very array
        (a chime, cached by its loader), so it is measured once."""
        key = id(samples)
        if (known := self._measured.get(key)) is not None and known[0] is samples:
            return known[1]
        meter = Meter(rate)
        meter.add(samples)
        lufs = meter.loudness()
        if remember:  # the array is kept here too, so its id stays its own
            self._measured[key] = (samples, lufs)
            while len(self._measured) > MAX_SOUNDS_MEASURED:
                self._measured.popitem(last=False)
        return lufs

    def levelling(self, rate: int) -> Levelling:
        return Levelling(self, rate)


class Levelling:
    """Loudness for one round of an announcement: the gain of each sound, one limiter over
    them all in the order they play, and a meter on what a voice says (to learn from when it
    has said it all). Without a Loudness, the sounds pass unchanged."""

    def __init__(self, loudness: Loudness | None, rate: int) -> None:
        self._loudness = loudness
        self._rate = rate
        self._limiter = (
            None if loudness is None else PeakLimiter(rate, loudness.target.ceiling_dbtp)
        )
        self._meter: Meter | None = None

    def chime(self, samples: Samples) -> Samples:
        """A chime (the same array each time it plays): brought to the target exactly."""
        return self.push(samples, self.gain_of(samples, remember=True))

    def gain_of(self, samples: Samples, remember: bool = False) -> float:
        """The gain that brings a whole sound (a chime, a cached phrase) to the target."""
        if self._loudness is None:
            return 1.0
        lufs = self._loudness.loudness_of(samples, self._rate, remember)
        return self._loudness.target.gain_for(lufs)

    def push(self, samples: Samples, gain: float) -> Samples:
        """Samples at `gain`, through the round's limiter (a little of them held back)."""
        return samples if self._limiter is None else self._limiter.push(samples, gain)

    def live(self, engine: str, chunk: Samples) -> Samples:
        """A piece of what a voice is saying: the voice's learned gain; measured as it goes."""
        if self._loudness is None or self._limiter is None:
            return chunk
        if self._meter is None:
            self._meter = Meter(self._rate)
        self._meter.add(chunk)
        levels = self._loudness.levels
        expected = levels.lufs(self._loudness.identity(engine), engine)
        return self._limiter.push(chunk, self._loudness.target.gain_for(expected))

    def spoken_to_the_end(self, engine: str) -> None:
        """The voice said all of it: what the meter read teaches its loudness."""
        meter, self._meter = self._meter, None
        if self._loudness is None or meter is None or meter.seconds < MIN_LEARN_S:
            return
        if (measured := meter.integrated()) is not None:
            self._loudness.levels.learn(self._loudness.identity(engine), engine, measured)

    def restart(self) -> None:
        """A voice failed halfway and the next one starts over: forget what was measured."""
        self._meter = None

    def flush(self) -> Samples:
        """The end of the round: what the limiter still holds."""
        return silence(0) if self._limiter is None else self._limiter.flush()
