"""The pure core: what decides, with no I/O and no heavy library, provably so.

The announcement model and its parsing, the scheduler, events, text, the rate budget, the
control-topic commands, the JSON loader, the chime names and the log escaping decide everything
about an announcement; they take the time as an argument and touch no file, socket, process or
device. This file proves it two ways: by the imports each module makes (read from its source), and
by what importing all of them loads (a fresh interpreter: no numpy, no audio, no network client).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "herald"
PURE = [
    "announcement",
    "scheduler",
    "events",
    "text",
    "budget",
    "commands",
    "payload_json",
    "chime_names",
    "logsafe",
    "sync",
]
# What a pure module may import: the standard library's pure parts, pydantic, and the core.
ALLOWED = {
    "__future__",
    "collections",
    "collections.abc",
    "dataclasses",
    "datetime",
    "enum",
    "hashlib",
    "heapq",
    "urllib.parse",
    "itertools",
    "json",
    "math",
    "pathlib",  # PurePath only: checked below
    "re",
    "time",  # the wall clock, for an event's `ts`
    "typing",
    "unicodedata",
    "uuid",
    "pydantic",
    *(f"herald.{name}" for name in PURE),
}


def imports_of(module: str) -> dict[str, set[str]]:
    """Each module the file imports, and the names it takes from it."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", PURE)
def test_a_core_module_imports_nothing_that_does_io(module: str) -> None:
    imported = imports_of(module)
    assert set(imported) <= ALLOWED, set(imported) - ALLOWED
    assert imported.get("pathlib", {"PurePath"}) <= {"PurePath"}  # paths as names, never files


def test_importing_the_core_loads_no_audio_network_or_device_code() -> None:
    code = (
        "import sys\n"
        + "".join(f"import herald.{name}\n" for name in PURE)
        # (Not `socket`: pydantic's e-mail address support imports it, and never uses it here.)
        + "heavy = {'numpy', 'soxr', 'websockets', 'paho', 'alsaaudio', 'asyncio',"
        " 'subprocess', 'herald.audio', 'herald.voice', 'herald.mqtt'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert loaded.strip() == "[]"
