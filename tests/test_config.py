"""Config loading: defaults, the shipped example, one-line errors that name the key, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from datetime import time as clock_time
from pathlib import Path

import pytest
from pydantic import ValidationError

from herald.announcement import PRIORITY_LEVELS
from herald.app import build_scheduler, quiet_hours
from herald.config import (
    Config,
    ConfigError,
    SecretSource,
    find_secret,
    host_and_port,
    load_config,
    read_secret,
)
from tests.support import REPO


def errors_for(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "herald.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return caught.value.lines


def test_the_shipped_example_is_valid_and_equals_the_defaults(monkeypatch) -> None:
    monkeypatch.delenv("HERALD_CONFIG", raising=False)
    config, source = load_config(str(REPO / "config" / "herald.toml"))
    assert source == REPO / "config" / "herald.toml"
    assert config.model_dump(exclude={"node_id"}) == Config().model_dump(exclude={"node_id"})


def test_contract_keys_and_defaults() -> None:
    config = Config()
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.base_topic) == (
        "localhost",
        1883,
        "herald",
    )
    assert config.voice.engines == ["espeak"]
    assert (config.audio.device, config.audio.sample_rate, config.audio.channels) == (
        "default",
        48000,
        1,
    )
    assert config.node_id  # the host name, made safe for a topic level
    assert "/" not in config.node_id


def test_config_is_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Config().mqtt.port = 1  # type: ignore[misc]


def test_unknown_key_is_named(tmp_path: Path) -> None:
    lines = errors_for(tmp_path, "[mqtt]\nhots = 'x'\n")
    assert lines == [f"config error: {tmp_path / 'herald.toml'}: mqtt.hots: unknown key"]


def test_wrong_type_is_named(tmp_path: Path) -> None:
    (line,) = errors_for(tmp_path, "[mqtt]\nport = 'eighteen'\n")
    assert line.startswith(f"config error: {tmp_path / 'herald.toml'}: mqtt.port: ")
    assert "integer" in line


def test_bad_values_are_named_each_on_its_own_line(tmp_path: Path) -> None:
    lines = errors_for(
        tmp_path,
        'node_id = "kitchen/one"\n[audio]\nchannels = 0\n[voice]\nengines = ["telepathy"]\n',
    )
    assert len(lines) == 3
    keys = [line.split(": ")[2] for line in lines]
    assert keys == ["node_id", "voice.engines[0]", "audio.channels"]
    assert "no '/'" in lines[0]
    assert "'espeak'" in lines[1] and "telepathy" in lines[1]


def test_an_engine_listed_twice_is_an_error(tmp_path: Path) -> None:
    (line,) = errors_for(tmp_path, '[voice]\nengines = ["espeak", "espeak"]\n')
    assert line.endswith("voice.engines: an engine is listed twice")


def test_the_chimes_directory_defaults_next_to_the_config_file(tmp_path: Path) -> None:
    assert Config().audio.chimes_dir == Path("/etc/herald/chimes")
    path = tmp_path / "herald.toml"
    path.write_text(f'[audio]\nchimes_dir = "{tmp_path / "sounds"}"\n')
    assert load_config(str(path))[0].audio.chimes_dir == tmp_path / "sounds"


@pytest.mark.parametrize("value", ["chimes", "./chimes", "/etc/herald/../chimes", ""])
def test_the_chimes_directory_is_an_absolute_path_without_dot_dot(
    tmp_path: Path, value: str
) -> None:
    (line,) = errors_for(tmp_path, f'[audio]\nchimes_dir = "{value}"\n')
    assert line == (
        f"config error: {tmp_path / 'herald.toml'}: audio.chimes_dir: "
        "give an absolute path without '..'"
    )


def test_a_priority_chime_may_be_any_absolute_wav_path(tmp_path: Path) -> None:
    path = tmp_path / "herald.toml"
    path.write_text('[priorities.high]\nttl_s = 300\nchime = "/usr/share/sounds/ding.wav"\n')
    config, _ = load_config(str(path))
    assert config.priorities.high.chime == "/usr/share/sounds/ding.wav"
    assert config.audio.chimes_dir == Path("/etc/herald/chimes")  # not confined to it


@pytest.mark.parametrize(
    ("chime", "reason"),
    [
        ("ding.wav", "chime 'ding.wav': give an absolute path"),
        (
            "/usr/share/sounds/ding.mp3",
            "chime '/usr/share/sounds/ding.mp3': not a built-in "
            "chime (soft, bell, alert, alarm) nor a WAV file",
        ),
    ],
)
def test_a_priority_chime_that_is_no_absolute_wav_path_is_named(
    tmp_path: Path, chime: str, reason: str
) -> None:
    (line,) = errors_for(tmp_path, f'[priorities.high]\nttl_s = 300\nchime = "{chime}"\n')
    assert line == f"config error: {tmp_path / 'herald.toml'}: priorities.high.chime: {reason}"


def test_toml_syntax_error(tmp_path: Path) -> None:
    (line,) = errors_for(tmp_path, "[mqtt\nport = 1\n")
    assert line.startswith(f"config error: {tmp_path / 'herald.toml'}: TOML syntax: ")


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "missing.toml"))
    assert caught.value.lines == [
        f"config error: {tmp_path / 'missing.toml'}: cannot read: No such file or directory"
    ]


def test_herald_config_env_names_the_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "env.toml"
    path.write_text('node_id = "from-env"\n')
    monkeypatch.setenv("HERALD_CONFIG", str(path))
    config, source = load_config(None)
    assert (config.node_id, source) == ("from-env", path)


def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[audio]\nsample_rate = 'fast'\n")
    result = subprocess.run(
        [sys.executable, "-m", "herald", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"config error: {path}: audio.sample_rate: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_secret_from_file_then_env_then_credential(tmp_path: Path, monkeypatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("HERALD_TEST_SECRET", "from-env")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "test_secret").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))

    assert read_secret(secret_file, "HERALD_TEST_SECRET", "test_secret") == "from-file"
    assert read_secret(None, "HERALD_TEST_SECRET", "test_secret") == "from-env"
    monkeypatch.delenv("HERALD_TEST_SECRET")
    assert read_secret(None, "HERALD_TEST_SECRET", "test_secret") == "from-credential"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert read_secret(None, "HERALD_TEST_SECRET", "test_secret") is None


def test_an_unreadable_secret_file_is_named_but_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_secret(tmp_path / "nope", "UNSET_VARIABLE_FOR_TEST", "none")
    assert caught.value.lines == [
        f"config error: secret file {tmp_path / 'nope'}: No such file or directory"
    ]


def test_the_installed_credential_is_found_when_readable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("HERALD_CREDENTIALS_DIR", str(tmp_path))
    assert find_secret(None, "DEEPGRAM_API_KEY", "deepgram_api_key") == SecretSource(
        "nowhere", None
    )
    (tmp_path / "deepgram_api_key").write_text("k3y\n")
    source = find_secret(None, "DEEPGRAM_API_KEY", "deepgram_api_key")
    assert source == SecretSource(str(tmp_path / "deepgram_api_key"), "k3y")


def test_an_unreadable_credentials_directory_is_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    # install.sh keeps the credentials in a root-only directory; the service user and a person
    # running `herald check` cannot even look inside it.
    monkeypatch.delenv("MQTT_TEST_UNSET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    locked = tmp_path / "credentials"
    locked.mkdir()
    (locked / "mqtt_password").write_text("secret")
    locked.chmod(0o000)  # nobody may look inside, not even its owner without privileges
    monkeypatch.setenv("HERALD_CREDENTIALS_DIR", str(locked))
    # Run as a user who cannot bypass file permissions: root without its DAC capabilities
    # (which still reaches the checkout and the venv as their owner), or anyone else as is.
    without_privileges = (
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
        ]
        if os.geteuid() == 0
        else []
    )
    result = subprocess.run(
        [
            *without_privileges,
            sys.executable,
            "-c",
            "from herald.config import find_secret;"
            "print(find_secret(None, 'MQTT_TEST_UNSET', 'mqtt_password'))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    locked.chmod(0o700)
    assert result.returncode == 0, result.stderr
    assert "readable by root and the service only" in result.stdout
    assert "secret" not in result.stdout.replace("readable", "")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", 6600)),
        ("music.local:6601", ("music.local", 6601)),
        ("[::1]", ("::1", 6600)),
        ("[fe80::1]:7000", ("fe80::1", 7000)),
    ],
)
def test_a_players_address_is_a_host_and_a_port(value: str, expected: tuple[str, int]) -> None:
    assert host_and_port(value, 6600) == expected
    assert Config.model_validate({"ducking": {"mpd": value}}).ducking.mpd == value


@pytest.mark.parametrize("value", ["localhost:x", "host:", ":6600", "::1", "[::1", "h:70000"])
def test_a_bad_players_address_is_refused_with_a_reason(value: str) -> None:
    with pytest.raises(ValidationError, match=r"port|host|IPv6"):
        Config.model_validate({"ducking": {"snapcast": value}})


def test_quiet_hours_from_the_config_reach_the_queue() -> None:
    """`[quiet_hours]` as written (start, end past midnight, min_priority) is what the queue
    holds announcements by, at start and after a reload."""
    config = Config.model_validate(
        {"quiet_hours": {"enabled": True, "start": "22:30", "end": "06:45", "min_priority": "high"}}
    )
    scheduler = build_scheduler(config)
    hours = scheduler.quiet_hours
    assert hours is not None
    assert (hours.start, hours.end) == (clock_time(22, 30), clock_time(6, 45))
    assert hours.min_priority == scheduler.quiet_min_priority == PRIORITY_LEVELS["high"]
    today = datetime.now().replace(second=0, microsecond=0)
    assert scheduler.quiet_now(today.replace(hour=23, minute=0).timestamp())
    assert not scheduler.quiet_now(today.replace(hour=7, minute=0).timestamp())

    scheduler.reconfigure(5, quiet_hours(Config()), 80)  # reloaded without them
    assert scheduler.quiet_hours is None
    assert not scheduler.quiet_now(today.replace(hour=23, minute=0).timestamp())
