"""The machine and the versions a run measured with, for the report's header."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tests.support import REPO


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not found"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def machine() -> dict[str, str]:
    load = os.getloadavg()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "memory": _memory(),
        "load average before the run (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _alsa_lib() -> str:
    with contextlib.suppress(OSError, AttributeError):
        library = ctypes.CDLL("libasound.so.2")
        library.snd_asoundlib_version.restype = ctypes.c_char_p
        found: bytes = library.snd_asoundlib_version()
        return found.decode()
    return "unknown"


def _herald() -> str:
    described = _package("herald")
    git = shutil.which("git")
    if git is None:
        return described
    commit = _first_line([git, "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        [git, "-C", str(REPO), "status", "--porcelain", "--", "daemon"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changes = ", with uncommitted changes in daemon/" if dirty else ""
    return f"{described} (commit {commit}{changes})"


def versions() -> dict[str, str]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return {
        "Python": platform.python_version(),
        "Herald": _herald(),
        "mosquitto": _first_line([mosquitto, "-h"]).removeprefix("mosquitto version "),
        "websockets": _package("websockets"),
        "paho-mqtt": _package("paho-mqtt"),
        "pyalsaaudio": _package("pyalsaaudio"),
        "alsa-lib": _alsa_lib(),
        "PulseAudio": _first_line(["pulseaudio", "--version"]).removeprefix("pulseaudio "),
        "numpy": _package("numpy"),
    }
