"""The control topics' payloads: exactly the documented values, anything else refused with why."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.commands import SirenCommand, parse_siren, parse_switch, parse_volume
from herald.controls import SAVE_INTERVAL_S, Controls, ControlsFile
from herald.statefile import StateFile


@pytest.mark.parametrize(
    ("payload", "command"),
    [
        (b'{"state": "ON"}', SirenCommand(on=True)),
        (b'{"state": "OFF"}', SirenCommand(on=False)),
        (b'{"state": "ON", "tone": "bell", "volume_level": 0.5}', SirenCommand(True, "bell", 0.5)),
        (b'{"state": "ON", "volume_level": 1}', SirenCommand(True, None, 1.0)),
        (b"ON", SirenCommand(on=True)),
        (b" OFF\n", SirenCommand(on=False)),
    ],
)
def test_the_siren_takes_what_home_assistant_sends(payload: bytes, command: SirenCommand) -> None:
    assert parse_siren(payload) == command


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", 'state must be "ON" or "OFF"'),  # how a retained message is deleted
        (b"false", 'state must be "ON" or "OFF"'),
        (b"on", 'state must be "ON" or "OFF"'),
        (b"{}", '"state" is required'),
        (b'{"state": null}', 'state must be "ON" or "OFF", got \'null\''),
        (b'{"state": true}', "state must be"),
        (b'{"state": "ON", "tone": "/etc/passwd.wav"}', "tone must be one of alarm, alert, bell"),
        (b'{"state": "ON", "volume_level": NaN}', "invalid JSON"),
        (b'{"state": "ON", "volume_level": 1e309}', "numbers must be finite"),
        (b'{"state": "ON", "volume_level": 1.5}', "volume_level must be a number 0.0-1.0"),
        (b'{"state": "ON", "volume_level": "loud"}', "volume_level must be"),
        (b'{"state": "ON", "volume_level": true}', "volume_level must be"),
        (b'{"state": "ON", "colour": "red"}', "unknown field 'colour'"),
        (b'{"x": ' * 100_000, "commands are short"),  # and so never nested too deeply
        (b"{" + b'"a":' * 10 + b"}", "invalid JSON"),
        (b'["ON"]', 'state must be "ON" or "OFF"'),
        (b"\xff", "not UTF-8"),
        (b"ON" * 1000, "commands are short"),
    ],
)
def test_anything_else_on_the_siren_is_refused_never_sounded(payload: bytes, reason: str) -> None:
    # Any payload but exactly OFF used to sound the critical alarm: an empty one, `false`, ...
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        parse_siren(payload)


@pytest.mark.parametrize(
    ("payload", "volume"), [(b"0.5", 0.5), (b"1", 1.0), (b"0", 0.0), (b"40", 0.4), (b" 1.0 ", 1.0)]
)
def test_volume_takes_a_fraction_or_a_percentage(payload: bytes, volume: float) -> None:
    assert parse_volume(payload) == pytest.approx(volume)


@pytest.mark.parametrize("payload", [b"nan", b"inf", b"-inf", b"1e309", b"101", b"-0.1", b"", b"x"])
def test_volume_refuses_what_is_not_a_level(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"expected a number 0\.0-1\.0|is outside 0\.0-1\.0"):
        parse_volume(payload)


@pytest.mark.parametrize(("payload", "on"), [(b"ON", True), (b"off", False), (b"1", True)])
def test_quiet_mode_takes_on_and_off(payload: bytes, on: bool) -> None:
    assert parse_switch(payload) is on


@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_every_control_payload_is_taken_or_refused_with_a_value_error(payload: bytes) -> None:
    for parse in (parse_siren, parse_switch, parse_volume):
        try:
            parse(payload)
        except ValueError as exc:
            assert str(exc) and "\n" not in str(exc)


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_any_json_on_the_siren_is_taken_or_refused(value: object) -> None:
    payload = json.dumps(value).encode()
    try:
        command = parse_siren(payload)
    except ValueError:
        return
    assert isinstance(value, dict) and value["state"] in ("ON", "OFF")
    assert command.on is (value["state"] == "ON")


class CountedControls(Controls):
    """Controls that count their saves (and still write the file)."""

    saves = 0

    def save(self, file: StateFile) -> None:
        type(self).saves += 1
        super().save(file)


def test_a_thousand_changes_are_a_few_writes_with_the_latest_values_last(tmp_path: Path) -> None:
    # A slider, or a flood on volume/set: each write used to be a write and a rename on an SD card.
    path = tmp_path / "controls.json"
    controls = CountedControls(0.5)

    async def run() -> None:
        saving = ControlsFile(controls, path)
        for step in range(1000):
            controls.volume = step / 1000
            saving.changed()
            await asyncio.sleep(0)
        await asyncio.sleep(SAVE_INTERVAL_S + 0.2)  # the last change is saved within the interval
        assert Controls.load(path, 0.0).volume == 0.999
        controls.volume = 0.25
        saving.changed()  # a second later: saved at once? no, within the interval
        saving.flush()  # the end of the run writes what is due
        assert Controls.load(path, 0.0).volume == 0.25

    asyncio.run(run())
    assert 2 <= CountedControls.saves <= 4
