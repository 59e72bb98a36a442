"""systemd/herald.service: the sandbox score, `systemd-analyze verify`, and the settings it needs.

`systemd-analyze` comes from Debian's `systemd` package, which `./install.sh --dev` installs; no
running systemd is needed.  `verify` runs on a copy of the unit whose ExecStart= names an
executable stub (the real /opt/herald/bin/herald exists only on an installed system), and any
output at all fails it: `verify` exits 0 even for an unknown key or an unparsable value, which it
only reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd/herald.service"
EXECUTABLE = "/opt/herald/bin/herald"
MAX_EXPOSURE = 2.0
TIMEOUT_S = 60


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: it is in Debian's `systemd` package, "
            "which ./install.sh --dev installs"
        )
    return path


def run_analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def verify_unit(unit_text: str, tmp_path: Path, dropins: dict[str, str] | None = None) -> str:
    """`systemd-analyze verify` a unit (and drop-ins): '' when clean, else what it printed.

    The unit is written to tmp_path as herald.service with ExecStart='s program replaced by an
    executable stub; drop-ins go to herald.service.d/NAME, where verify reads them.
    """
    stub = tmp_path / "bin/herald"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    assert f"ExecStart={EXECUTABLE} " in unit_text
    unit = tmp_path / "units/herald.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(unit_text.replace(f"ExecStart={EXECUTABLE} ", f"ExecStart={stub} "))
    for name, text in (dropins or {}).items():
        dropin = unit.parent / "herald.service.d" / name
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(text)
    result = run_analyze("verify", "--man=no", "--recursive-errors=no", unit)
    output = (result.stdout + result.stderr).replace(str(unit.parent), "<units>")
    if result.returncode != 0:
        output += f"\n(exit status {result.returncode})"
    return output.strip()


def settings(unit_text: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit: name -> values in order ('' resets a list)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            name, _, value = line.partition("=")
            found.setdefault(name.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return settings(UNIT.read_text())


def test_systemd_analyze_security_exposure_is_at_most_2() -> None:
    result = run_analyze("security", "--offline=true", "--no-pager", UNIT)
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    match = re.search(r"Overall exposure level for herald\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, f"no exposure level in the output\n{output}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}\n{output}"


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert verify_unit(UNIT.read_text(), tmp_path) == ""


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt value is reported (and verify still exits 0)."""
    broken = UNIT.read_text().replace("NotifyAccess=main", "NotifyAccess=mian")
    assert "mian" in verify_unit(broken, tmp_path)


def test_the_daemon_tells_systemd_it_is_ready_and_alive(service: dict[str, list[str]]) -> None:
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_memory_and_tasks_are_bounded_for_a_pi_zero(service: dict[str, list[str]]) -> None:
    # A Pi Zero 2 W has 512 MB; bench/ part 5 measured Herald's peak (see the unit's comment).
    def mib(value: str) -> int:
        return int(value.removesuffix("M"))

    assert mib(service["MemoryHigh"][0]) < mib(service["MemoryMax"][0]) <= 256
    assert 16 <= int(service["TasksMax"][0]) <= 128


def test_only_alsa_devices_and_no_private_devices(service: dict[str, list[str]]) -> None:
    assert service["DevicePolicy"] == ["closed"]
    assert service["DeviceAllow"] == ["char-alsa rw"]
    assert "PrivateDevices" not in service  # it would hide /dev/snd
    assert service["SupplementaryGroups"] == ["audio"]
    assert service["User"] == ["herald"]


def test_network_and_state_directory(service: dict[str, list[str]]) -> None:
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == ["herald"]
    assert service["StateDirectoryMode"] == ["0750"]


def test_credentials_come_only_from_the_install_drop_in(service: dict[str, list[str]]) -> None:
    """A LoadCredential= whose file is missing fails the unit, so install.sh's drop-in lists
    the secrets that exist; the unit itself names none."""
    assert "LoadCredential" not in service
    assert "LoadCredentialEncrypted" not in service
