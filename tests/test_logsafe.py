"""Text from outside shown in a log line: escaped, on one line, cut short."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.logsafe import SHOWN_CHARS, shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("doorbell.wav", "doorbell.wav"),
        ("Grüße, Zoë — 早上好 🔔", "Grüße, Zoë — 早上好 🔔"),
        ("a\nWARNING forged", "a\\nWARNING forged"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x1b[31mred\x00", "\\x1b[31mred\\x00"),
        ("\x85next line", "\\x85next line"),
        ("right\u202eto left\u2028", "right\\u202eto left\\u2028"),
        ("\U000e0001tag", "\\U000e0001tag"),
        ("a\\nb", "a\\\\nb"),  # a backslash is doubled: an escape cannot be forged
        ("", ""),
    ],
)
def test_what_is_not_printable_is_escaped(value: str, expected: str) -> None:
    assert shown(value) == expected


def test_a_long_value_is_cut_short_with_an_ellipsis() -> None:
    assert shown("x" * SHOWN_CHARS) == "x" * SHOWN_CHARS
    assert shown("x" * (SHOWN_CHARS + 1)) == "x" * SHOWN_CHARS + "…"
    assert shown("abcdef", limit=4) == "abcd…"


def test_an_escape_is_never_cut_in_half() -> None:
    assert shown("abc\n", limit=4) == "abc…"
    assert shown("abc\n", limit=5) == "abc\\n"


@given(st.text(), st.integers(0, 200))
def test_the_result_is_one_printable_line_of_bounded_length(value: str, limit: int) -> None:
    result = shown(value, limit)
    assert result.isprintable()
    assert len(result) <= limit + 1


@given(st.text(st.characters(codec="ascii")))
def test_ascii_text_reads_back_as_it_was(value: str) -> None:
    result = shown(value, limit=10_000)
    assert result.encode().decode("unicode_escape") == value
