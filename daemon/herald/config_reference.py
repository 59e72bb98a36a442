"""The key tables of docs/configuration.md, generated from the models in herald/config.py.

Every key of herald.toml gets one row: its dotted name, its default and its meaning, which is
the key's pydantic `Field` description. So the reference cannot drift from the code: after
changing a key or a description, regenerate the tables between the markers:

    .venv/bin/python -m herald.config_reference --write docs/configuration.md

`--check FILE` only compares; with neither option the tables are printed.
tests/test_config_reference.py fails while the committed file differs. The daemon never imports
this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from herald.config import Config

COMMAND = ".venv/bin/python -m herald.config_reference --write docs/configuration.md"
BEGIN = f"<!-- generated from daemon/herald/config.py by `{COMMAND}`: do not edit -->"
END = "<!-- end of the generated reference -->"

# Defaults that Herald works out when it starts, as a person reads them (calling the factory
# here would give this machine's host name, this process's environment).
FACTORY_DEFAULTS = {
    "node_id": "the host name",
    "state_dir": "`$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `/var/lib/herald`",
}
# Sections made of several sections of one kind (priorities.low, .normal, ...): one table,
# `priorities.<level>`, whose default column gives each one's default.
MEMBER_PLACEHOLDERS = {"priorities": "level"}

# A section's defaults: (member, the section's default instance) for each member of a collapsed
# section, else one ("", instance); None at the top level, whose defaults are its fields'.
Defaults = list[tuple[str, BaseModel]] | None


@dataclass(frozen=True)
class Key:
    """One row, in Markdown: the dotted key, its default, its meaning."""

    name: str
    default: str
    meaning: str


@dataclass(frozen=True)
class Section:
    """One table: `name` is its TOML table, "" for the top level; `note` goes above it."""

    name: str
    keys: tuple[Key, ...]
    note: str = ""


def sections(model: type[BaseModel] = Config) -> list[Section]:
    """Every section of `model` with keys of its own, in the models' order."""
    found: list[Section] = []
    _walk(model, None, "", found)
    named = {key.name for section in found for key in section.keys}
    if stale := set(FACTORY_DEFAULTS) - named:
        raise ValueError(f"FACTORY_DEFAULTS names keys that do not exist: {sorted(stale)}")
    collapsed = {section.name.rsplit(".", 1)[0] for section in found if section.note}
    if stale := set(MEMBER_PLACEHOLDERS) - collapsed:
        raise ValueError(f"MEMBER_PLACEHOLDERS names sections that do not exist: {sorted(stale)}")
    return found


def _walk(
    model: type[BaseModel], defaults: Defaults, name: str, out: list[Section], note: str = ""
) -> None:
    prefix = f"{name}." if name else ""
    keys: list[Key] = []
    tables: list[tuple[str, type[BaseModel]]] = []
    for field_name, field in model.model_fields.items():
        section = _section_model(field)
        if section is not None:
            tables.append((field_name, section))
            continue
        key = prefix + field_name
        keys.append(Key(key, _default(key, field_name, field, defaults), _meaning(key, field)))
    if keys:
        out.append(Section(name, tuple(keys), note))
    for field_name, section in tables:
        key = prefix + field_name
        own = [(member, _attr(instance, field_name)) for member, instance in defaults or []]
        if not own:  # the top level
            own = [("", _model_default(key, model.model_fields[field_name]))]
        if key in MEMBER_PLACEHOLDERS:
            kinds = {_section_model(member) for member in section.model_fields.values()}
            if len(own) != 1 or len(kinds) != 1 or None in kinds:
                raise TypeError(f"{key}: only a section of sections of one kind is collapsed")
            (member_model,) = kinds
            assert member_model is not None
            members = [(member, _attr(own[0][1], member)) for member in section.model_fields]
            placeholder = f"<{MEMBER_PLACEHOLDERS[key]}>"
            listed = ", ".join(f"`{member}`" for member, _ in members)
            note = f"`{placeholder}` is one of {listed}."
            _walk(member_model, members, f"{key}.{placeholder}", out, note)
        else:
            _walk(section, own, key, out)


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _attr(instance: BaseModel, name: str) -> BaseModel:
    value = getattr(instance, name)
    assert isinstance(value, BaseModel)
    return value


def _model_default(key: str, field: FieldInfo) -> BaseModel:
    value = field.get_default(call_default_factory=True)
    if not isinstance(value, BaseModel):
        raise TypeError(f"{key}: a section needs a default: the section with its defaults")
    return value


def _meaning(key: str, field: FieldInfo) -> str:
    if not field.description:
        raise ValueError(f"{key}: no Field description, which is its meaning in the reference")
    return field.description


def _default(key: str, name: str, field: FieldInfo, defaults: Defaults) -> str:
    if key in FACTORY_DEFAULTS:
        return FACTORY_DEFAULTS[key]
    if field.default_factory is not None and field.default_factory not in (list, dict):
        raise ValueError(
            f"{key}: a default computed at start: add how it reads to FACTORY_DEFAULTS"
        )
    if defaults is None:
        if field.is_required():
            raise ValueError(f"{key}: a top-level key without a default")
        return _code(field.get_default(call_default_factory=True))
    shown = [(member, _code(getattr(instance, name))) for member, instance in defaults]
    if len({text for _, text in shown}) == 1:
        return shown[0][1]
    return ", ".join(f"{member} {text}" for member, text in shown)


def _code(value: object) -> str:
    """A default as it would be written in herald.toml, but bare strings, and `none` for None."""
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        text = value or '""'
    elif isinstance(value, PurePath):
        text = str(value)
    elif isinstance(value, list | tuple):
        text = json.dumps([str(item) if isinstance(item, PurePath) else item for item in value])
    else:
        raise TypeError(f"no way to show a default of type {type(value).__name__}")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_tables() -> str:
    """The generated part of docs/configuration.md, its markers included."""
    lines = [BEGIN, ""]
    for section in sections():
        lines += [f"### `[{section.name}]`" if section.name else "### Top level", ""]
        if section.note:
            lines += [section.note, ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        lines += [
            f"| `{key.name}` | {_cell(key.default)} | {_cell(key.meaning)} |"
            for key in section.keys
        ]
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def render_document(document: str) -> str:
    """`document` with what lies between its markers (the markers too) generated afresh."""
    start, end = document.find(BEGIN), document.find(END)
    if document.count(BEGIN) != 1 or document.count(END) != 1 or end < start:
        raise ValueError(f"the document needs one line\n{BEGIN}\nthen, later, one line\n{END}")
    stop = end + len(END)
    if document[stop : stop + 1] == "\n":
        stop += 1
    return document[:start] + render_tables() + document[stop:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m herald.config_reference",
        description="The configuration reference (docs/configuration.md's key tables), "
        "generated from the Field descriptions in herald/config.py.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="FILE", type=Path, help="regenerate FILE's tables")
    action.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if FILE is stale")
    args = parser.parse_args(argv)
    if args.write is None and args.check is None:
        sys.stdout.write(render_tables())
        return 0
    path: Path = args.write or args.check
    try:
        document = path.read_text(encoding="utf-8")
        fresh = render_document(document)
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if fresh == document:
        return 0
    if args.check is not None:
        print(f"{path} is stale: run {COMMAND}", file=sys.stderr)
        return 1
    path.write_text(fresh, encoding="utf-8")
    print(f"{path}: regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
