"""JSON from the broker, loaded so that a hostile payload is refused with a reason, nothing else.

`json.loads` alone accepts NaN and Infinity (and reads 1e309 as infinity), raises a plain
ValueError for an integer of more than 4,300 digits and RecursionError for deep nesting, and
returns strings with unpaired surrogates (`"\\ud800"`) that cannot be written out as UTF-8 again,
so an event or a log line about them would fail later. load_json refuses each of these with
InvalidJson, a ValueError whose message is one line starting "invalid JSON: ".
"""

from __future__ import annotations

import json
import math

# A broker payload is a flat object; a little room for other topics, none for a stack bomb.
MAX_DEPTH = 32
# No field needs a number written with more characters than this; Python's conversion of a
# long integer is quadratic (and refused past 4,300 digits).
MAX_NUMBER_LENGTH = 100


class InvalidJson(ValueError):
    """A document that is not JSON Herald can use; the message is the one-line reason."""


def load_json(document: str | bytes) -> object:
    """The value of a JSON document whose numbers are finite and whose strings are Unicode.

    Bytes must be UTF-8. Raises InvalidJson saying what was wrong.
    """
    if isinstance(document, bytes):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"invalid JSON: not UTF-8 (bad byte at offset {exc.start})") from None
    try:
        value = json.loads(
            document,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_short_int,
        )
    except json.JSONDecodeError as exc:
        raise InvalidJson(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise InvalidJson("invalid JSON: nested too deeply") from None
    _check_depth_and_strings(value)
    return value


def _refuse_constant(name: str) -> float:
    raise InvalidJson("invalid JSON: numbers must be finite")  # NaN, Infinity, -Infinity


def _finite_float(literal: str) -> float:
    _check_length(literal)
    number = float(literal)
    if not math.isfinite(number):  # 1e309 and the like
        raise InvalidJson("invalid JSON: numbers must be finite")
    return number


def _short_int(literal: str) -> int:
    _check_length(literal)
    return int(literal)


def _check_length(literal: str) -> None:
    if len(literal) > MAX_NUMBER_LENGTH:
        raise InvalidJson("invalid JSON: a number has too many digits")


def _check_depth_and_strings(value: object) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings (keys too) with unpaired surrogates."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:  # a loop, not recursion: the depth is what is being checked
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_unicode(item)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidJson("invalid JSON: nested too deeply")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJson(
            f"invalid JSON: a string has an unpaired surrogate (U+{ord(text[exc.start]):04X})"
        ) from None
