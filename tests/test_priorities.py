"""Priorities in process: preemption, FIFO, expiry, stop, clear, quiet hours, repeat and volume.

The real Dispatcher, Speaker and Scheduler, with an instant tone voice and an output that plays
in virtual time (tests/harness.py): every sample heard says which announcement it belongs to,
and a test knows to the sample how much of one was heard when something cut in.
"""

from __future__ import annotations

from datetime import time as clock_time

import numpy as np
import pytest

from herald.announcement import PRIORITY_LEVELS
from herald.audio.chimes import load_chime
from herald.audio.dsp import Samples, silence
from herald.scheduler import QuietHours
from herald.speaker import REPEAT_PAUSE_MS
from tests.fake_deepgram import dominant_hz, tone_hz
from tests.harness import RATE, Harness, run, tone_of

LOW = "A long and leisurely announcement about the washing machine, which has finished at last."
CRITICAL = "Smoke in the kitchen!"
EXPIRED = "its time to live ran out before it was spoken"


def joined(*pieces: Samples) -> Samples:
    return np.concatenate(pieces)


def frames(seconds: float) -> int:
    return round(seconds * RATE)


def test_a_critical_one_cuts_in_and_the_low_one_is_heard_again_from_its_start() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text=LOW, id="low", priority="low")
        await h.until("started", "low")
        await h.wait(1.005)
        h.say(text=CRITICAL, id="fire", priority="critical")
        await h.until("finished", "low")

        kinds = h.events.kinds()
        assert kinds.index(("preempted", "low")) < kinds.index(("started", "fire"))
        assert kinds.index(("finished", "fire")) < kinds.index(("finished", "low"))
        preempted = h.events.find("preempted", "low")
        assert (preempted["by"], preempted["requeued"]) == ("fire", True)
        lived = [e.kind for e in h.events.of("low")]
        assert lived == ["queued", "started", "preempted", "started", "finished"]
        assert h.output.drops[0] == h.said["fire"]  # silenced the moment the critical came

        # Heard: 1.005 s of the low one, the alarm, the critical text, the low one from its
        # start, each whole and in order, sample for sample.
        alarm, low, fire = load_chime("alarm", RATE), tone_of(LOW), tone_of(CRITICAL)
        cut = frames(1.005)
        heard = h.output.heard()
        assert np.array_equal(heard, joined(low[:cut], alarm, fire, low))
        assert dominant_hz(heard[:cut], RATE) == pytest.approx(tone_hz(LOW), abs=3)
        assert h.voice.asked == [LOW, CRITICAL, LOW]

    run(scenario)


def test_a_critical_one_cuts_in_while_the_chime_plays() -> None:
    async def scenario(h: Harness) -> None:
        soft = load_chime("soft", RATE)  # a normal one's chime
        h.say(text="The washing is done.", id="n1")
        await h.wait(0.1)
        assert h.output.playing is not None and np.array_equal(h.output.playing, soft)
        h.say(text=CRITICAL, id="fire", priority="critical")
        await h.until("finished", "n1")

        # It had not started (its words) when it was cut off.
        assert [e.kind for e in h.events.of("n1")] == ["queued", "preempted", "started", "finished"]
        preempted = h.events.find("preempted", "n1")
        assert (preempted["by"], preempted["requeued"]) == ("fire", True)
        alarm, fire = load_chime("alarm", RATE), tone_of(CRITICAL)
        again = joined(soft, tone_of("The washing is done."))  # chime and all, from the start
        heard = h.output.heard()
        assert np.array_equal(heard, joined(soft[: frames(0.1)], alarm, fire, again))

    run(scenario)


def test_two_preemptions_in_a_row_requeue_both_and_each_is_heard_again_whole() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text=LOW, id="low", priority="low")
        await h.until("started", "low")
        await h.wait(0.505)
        h.say(text="High water in the cellar.", id="high", priority="high", chime=False)
        await h.until("started", "high")
        await h.wait(0.305)
        h.say(text=CRITICAL, id="fire", priority="critical", chime=False)
        await h.until("finished", "low")

        preempted = [(e.id, e["by"], e["requeued"]) for e in h.events.seen if e.kind == "preempted"]
        assert preempted == [("low", "high", True), ("high", "fire", True)]
        finished = [e.id for e in h.events.seen if e.kind == "finished"]
        assert finished == ["fire", "high", "low"]
        low, high, fire = tone_of(LOW), tone_of("High water in the cellar."), tone_of(CRITICAL)
        heard = h.output.heard()
        assert np.array_equal(
            heard, joined(low[: frames(0.505)], high[: frames(0.305)], fire, high, low)
        )

    run(scenario)


@pytest.mark.parametrize("arrival", [("high", "fire"), ("fire", "high")])
def test_two_that_cut_in_at_the_same_instant_preempt_once(arrival: tuple[str, str]) -> None:
    texts = {"high": "High water in the cellar.", "fire": CRITICAL}
    priorities = {"high": "high", "fire": "critical"}

    async def scenario(h: Harness) -> None:
        h.say(text=LOW, id="low", priority="low")
        await h.until("started", "low")
        await h.wait(0.505)
        for ident in arrival:  # in the same turn of the loop
            h.say(text=texts[ident], id=ident, priority=priorities[ident], chime=False)
        await h.until("finished", "low")

        preempted = [e for e in h.events.seen if e.kind == "preempted"]
        assert [(e.id, e["requeued"]) for e in preempted] == [("low", True)]
        assert preempted[0]["by"] == "fire"  # the one that speaks next, whichever came first
        started = [e.id for e in h.events.seen if e.kind == "started"]
        assert started == ["low", "fire", "high", "low"]
        low, high, fire = tone_of(LOW), tone_of(texts["high"]), tone_of(CRITICAL)
        assert np.array_equal(h.output.heard(), joined(low[: frames(0.505)], fire, high, low))

    run(scenario)


def test_a_stop_right_after_a_preemption_drops_the_interrupted_one_and_the_newcomer_speaks() -> (
    None
):
    """The critical one and a stop arrive in one turn of the loop, before the speaking task has
    heard of the preemption: the stop is about the one that was speaking."""

    async def scenario(h: Harness) -> None:
        h.say(text=LOW, id="low", priority="low")
        await h.until("started", "low")
        await h.wait(0.505)
        h.say(text=CRITICAL, id="fire", priority="critical", chime=False)
        assert h.dispatcher.stop_current() == 1
        await h.until("finished", "fire")
        await h.wait(10)  # nothing more comes: the low one is gone

        assert [e.kind for e in h.events.of("low")] == ["queued", "started", "dropped"]
        assert h.events.find("dropped", "low")["reason"] == "stopped"
        assert not [e for e in h.events.seen if e.kind == "preempted"]
        heard = h.output.heard()
        assert np.array_equal(heard, joined(tone_of(LOW)[: frames(0.505)], tone_of(CRITICAL)))

    run(scenario)


def test_drop_on_preempt_and_equal_priority_does_not_interrupt() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text="Normal one.", id="n1", chime=False)
        await h.until("started", "n1")
        h.say(text="Normal two.", id="n2", interrupt=True, chime=False)
        h.say(text=LOW, id="low", priority="low", on_preempt="drop", chime=False)
        await h.until("started", "low")
        await h.wait(0.405)
        h.say(text="High.", id="high", priority="high", chime=False)
        await h.until("finished", "high")
        await h.wait(10)  # nothing more comes: the low one is gone

        finished = [e.id for e in h.events.seen if e.kind == "finished"]
        assert finished == ["n1", "n2", "high"]  # n2 waited for n1: same priority never interrupts
        assert h.events.find("started", "n2").at == h.events.find("finished", "n1").at
        dropped = h.events.find("preempted", "low")
        assert (dropped.id, dropped["by"], dropped["requeued"]) == ("low", "high", False)
        assert [e.kind for e in h.events.of("low")] == ["queued", "started", "preempted"]
        assert [e.id for e in h.events.seen if e.kind == "preempted"] == ["low"]
        n1, n2, low, high = (tone_of(t) for t in ("Normal one.", "Normal two.", LOW, "High."))
        assert np.array_equal(h.output.heard(), joined(n1, n2, low[: frames(0.405)], high))
        assert h.voice.asked.count(LOW) == 1

    run(scenario)


def test_a_resumed_one_goes_on_from_the_sentence_it_was_cut_in() -> None:
    text = "First sentence here. Second sentence is this one. Third one ends it."
    rest = "Second sentence is this one. Third one ends it."

    async def scenario(h: Harness) -> None:
        h.say(text=text, id="story", priority="low", on_preempt="resume")
        await h.until("started", "story")
        await h.wait(2.005)  # 14 characters a second: into the second sentence
        h.say(text=CRITICAL, id="fire", priority="critical", chime=False)
        await h.until("finished", "story")

        preempted = h.events.find("preempted", "story")
        assert (preempted["by"], preempted["requeued"]) == ("fire", True)
        assert h.voice.asked == [text, CRITICAL, rest]
        heard = h.output.heard()
        assert np.array_equal(
            heard, joined(tone_of(text)[: frames(2.005)], tone_of(CRITICAL), tone_of(rest))
        )

    run(scenario)


def test_a_resumed_one_cut_in_its_repeat_goes_on_from_where_that_round_was() -> None:
    """Cut 2 s into its second round: it resumes from the second sentence of that round (not
    from where the time spoken in both rounds would put it)."""
    text = "First sentence here. Second sentence is this one. Third one ends it."
    rest = "Second sentence is this one. Third one ends it."

    async def scenario(h: Harness) -> None:
        h.say(text=text, id="story", priority="low", on_preempt="resume", repeat=2, chime=False)
        await h.until("started", "story")
        round_s = len(tone_of(text)) / RATE + REPEAT_PAUSE_MS / 1000
        await h.wait(round_s + 2.005)
        h.say(text=CRITICAL, id="fire", priority="critical", chime=False)
        await h.until("started", "fire")

        assert h.voice.asked == [text, CRITICAL]  # (the repeat came from memory)
        resumed = h.scheduler.find("story")
        assert resumed is not None and resumed.text == rest

    run(scenario)


def test_an_expired_one_is_reported_when_its_time_comes_while_another_speaks() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text=LOW, id="long", chime=False)
        await h.until("started", "long")
        h.say(text="Stale soon.", id="stale", ttl=0.5)
        expired = await h.until("expired", "stale")
        assert expired["reason"] == EXPIRED
        assert expired.at == pytest.approx(h.said["stale"] + 0.5, abs=0.02)  # on time
        await h.until("finished", "long")

        assert [e.kind for e in h.events.of("stale")] == ["queued", "expired"]
        assert h.events.fates() == {
            "stale": ("expired", EXPIRED),
            "long": ("finished", None),
        }
        assert np.array_equal(h.output.heard(), tone_of(LOW))  # spoken to its end meanwhile

    run(scenario)


def test_clear_drops_what_waits_and_stop_what_speaks_and_the_queue_goes_on() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text=LOW, id="long", chime=False)
        await h.until("started", "long")
        h.say(text="Cleared one.", id="c1")
        h.say(text="Cleared two.", id="c2")
        await h.wait(1.005)
        assert h.dispatcher.clear_queue() == 2
        assert h.output.drops == []  # what speaks goes on
        await h.wait(0.5)
        assert h.dispatcher.stop_current() == 1
        stopped_at = h.output.drops[0]
        h.say(text="After the stop.", id="after", chime=False)
        await h.until("finished", "after")

        assert h.events.fates() == {
            "c1": ("dropped", "cleared"),
            "c2": ("dropped", "cleared"),
            "long": ("dropped", "stopped"),
            "after": ("finished", None),
        }
        assert [e.kind for e in h.events.of("c1")] == ["queued", "dropped"]
        assert h.events.find("dropped", "long").at == stopped_at
        heard = h.output.heard()
        assert np.array_equal(
            heard, joined(tone_of(LOW)[: frames(1.505)], tone_of("After the stop."))
        )
        assert h.voice.asked == [LOW, "After the stop."]

    run(scenario)


def test_stop_and_clear_with_nothing_to_stop_or_clear_change_nothing() -> None:
    async def scenario(h: Harness) -> None:
        assert h.dispatcher.stop_current() == 0
        assert h.dispatcher.clear_queue() == 0
        await h.wait(1)
        assert h.events.seen == [] and h.output.drops == []
        h.say(text="Still here.", id="next", chime=False)
        await h.until("finished", "next")
        assert [e.kind for e in h.events.of("next")] == ["queued", "started", "finished"]
        assert np.array_equal(h.output.heard(), tone_of("Still here."))

    run(scenario)


def test_stop_during_the_chime_drops_it_before_its_words() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text="Cut short.", id="chimed")
        await h.wait(0.1)
        assert h.dispatcher.stop_current() == 1
        await h.wait(10)

        assert [e.kind for e in h.events.of("chimed")] == ["queued", "dropped"]
        assert h.events.fates() == {"chimed": ("dropped", "stopped")}
        assert np.array_equal(h.output.heard(), load_chime("soft", RATE)[: frames(0.1)])

    run(scenario)


def test_quiet_hours_hold_the_less_urgent_and_let_critical_through() -> None:
    night = QuietHours(clock_time(22, 0), clock_time(7, 0), PRIORITY_LEVELS["critical"])

    async def scenario(h: Harness) -> None:
        h.say(text="Laundry.", id="held", ttl=2)
        h.say(text="Smoke!", id="fire", priority="critical", chime=False)
        expired = await h.until("expired", "held")

        fate = {e.id: e.kind for e in h.events.seen if e.kind != "queued"}
        assert fate == {"fire": "finished", "held": "expired"}
        assert [e.kind for e in h.events.of("held")] == ["queued", "expired"]
        assert expired.at == pytest.approx(h.said["held"] + 2, abs=0.02)  # held until it expired
        assert np.array_equal(h.output.heard(), tone_of("Smoke!"))

    run(scenario, quiet_hours=night, local_time=clock_time(23, 30))


def test_repeat_and_volume() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text="Twice.", id="r", repeat=2, volume=0.5, chime=False)
        await h.until("finished", "r")

        tone = tone_of("Twice.")
        half = np.round(tone.astype(np.float64) * 0.5).astype(np.int16)
        pause = silence(RATE * REPEAT_PAUSE_MS // 1000)
        # Each round whole at half volume, with a pause between the two.
        assert np.array_equal(h.output.heard(), joined(half, pause, half))
        assert len(pause) >= int(0.5 * RATE)
        # In time, too: the second round begins 0.6 s after the first has been heard.
        sounds = h.output.sounds
        paused = next(i for i, s in enumerate(sounds) if np.array_equal(s.samples, pause))
        again = sounds[paused + 1].at - sounds[0].at
        assert again == pytest.approx(len(tone) / RATE + REPEAT_PAUSE_MS / 1000)
        assert [e.kind for e in h.events.of("r")] == ["queued", "started", "finished"]
        assert h.voice.asked == ["Twice."]  # the second round from memory, not asked again

    run(scenario)


def test_a_round_too_long_to_keep_is_asked_of_the_voice_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = "A long and leisurely announcement, repeated."
    monkeypatch.setattr("herald.speaker.REPEAT_FROM_MEMORY_S", len(tone_of(text)) / RATE - 0.1)

    async def scenario(h: Harness) -> None:
        h.say(text=text, id="r", repeat=2, chime=False)
        await h.until("finished", "r")

        assert h.voice.asked == [text, text]
        pause = silence(RATE * REPEAT_PAUSE_MS // 1000)
        assert np.array_equal(h.output.heard(), joined(tone_of(text), pause, tone_of(text)))

    run(scenario)


def test_the_configured_volume_applies_and_a_critical_one_is_never_quieter_than_its_floor() -> None:
    async def scenario(h: Harness) -> None:
        h.say(text="Quietly.", id="q", chime=False)
        h.say(text="Loudly!", id="c", priority="critical", volume=0.2, chime=False)
        await h.until("finished", "q")

        def scaled(text: str, gain: float) -> Samples:
            return np.round(tone_of(text).astype(np.float64) * gain).astype(np.int16)

        # The critical one first (most urgent), at critical_min_volume (0.7), not 0.2.
        assert np.array_equal(
            h.output.heard(), joined(scaled("Loudly!", 0.7), scaled("Quietly.", 0.4))
        )

    run(scenario, volume=0.4)
