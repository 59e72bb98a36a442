"""The configuration reference cannot drift: docs/configuration.md's key tables are generated from
config.py's Field descriptions, and config/herald.toml shows every key the models have."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from herald.config import Config, MqttConfig
from herald.config_reference import BEGIN, COMMAND, END, main, render_document, render_tables
from tests.support import REPO

DOC = REPO / "docs" / "configuration.md"
EXAMPLE = REPO / "config" / "herald.toml"
# A commented-out key in the example: `# username = "herald"`, never a comment's prose.
COMMENTED_KEY = re.compile(r"^# ?(?=[A-Za-z_][A-Za-z0-9_]* = )")


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from model_keys(kind, f"{prefix}{name}.")
        else:
            yield prefix + name


def toml_keys(table: dict[str, object], prefix: str = "") -> Iterator[str]:
    for name, value in table.items():
        if isinstance(value, dict):
            yield from toml_keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def example_keys() -> list[str]:
    """Every key config/herald.toml shows, set or commented out."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    uncommented = "\n".join(COMMENTED_KEY.sub("", line) for line in lines)
    return list(toml_keys(tomllib.loads(uncommented)))  # a key shown twice fails here


def test_the_committed_reference_is_the_generated_one() -> None:
    document = DOC.read_text(encoding="utf-8")
    assert render_document(document) == document, f"docs/configuration.md is stale: run {COMMAND}"


def test_the_example_config_shows_every_key_and_no_other() -> None:
    shown, known = set(example_keys()), set(model_keys(Config))
    assert not shown - known, f"config/herald.toml shows unknown keys: {sorted(shown - known)}"
    assert not known - shown, f"add to config/herald.toml (commented out): {sorted(known - shown)}"


def test_the_example_reading_finds_commented_keys() -> None:
    keys = example_keys()
    assert {"node_id", "mqtt.username", "voice.slng.url", "audio.chimes_dir"} <= set(keys)
    assert "priorities.critical.chime" in keys


def test_every_key_is_in_the_reference_with_its_description() -> None:
    tables = render_tables()
    for key in model_keys(Config):
        shown = re.sub(r"^priorities\.(low|normal|high|critical)\.", "priorities.<level>.", key)
        assert f"| `{shown}` |" in tables, key
    for field in MqttConfig.model_fields.values():
        assert field.description is not None
        assert field.description in tables


def test_a_changed_description_makes_the_committed_reference_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = DOC.read_text(encoding="utf-8")
    monkeypatch.setattr(MqttConfig.model_fields["port"], "description", "the broker's port")
    fresh = render_document(document)
    assert fresh != document
    assert "| `mqtt.port` | `1883` | the broker's port |" in fresh


def test_write_regenerates_only_between_the_markers_and_check_says_when_stale(
    tmp_path: Path,
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(f"# Prose\n\n{BEGIN}\n| old | table |\n{END}\n\nMore prose.\n")
    assert main(["--check", str(stale)]) == 1
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    text = stale.read_text()
    assert text == f"# Prose\n\n{render_tables()}\nMore prose.\n"


def test_a_document_without_its_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="needs one line"):
        render_document("# No markers\n")
    with pytest.raises(ValueError, match="needs one line"):
        render_document(f"{END}\n{BEGIN}\n")
