"""Cleaning received text, sentences, and where a cut-off announcement resumes."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.text import (
    MAX_COMBINING_MARKS,
    SPOKEN_CHARS_PER_SECOND,
    clean_text,
    first_control_character,
    sentences,
    unspoken_part,
)

TEXT = "The washing machine is done. Please empty it soon! Thank you."
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl: one emoji
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want" (Persian), ZWNJ


def test_sentences_fold_whitespace_and_keep_their_marks() -> None:
    cjk_first, cjk_second = "\u4e94\u3002", "\u516d\uff01"  # two short CJK sentences
    assert sentences(f"  One.  Two!\nThree?   Four\u2026  {cjk_first}{cjk_second} ") == [
        "One.", "Two!", "Three?", "Four\u2026", cjk_first, cjk_second,
    ]  # fmt: skip


def test_resume_starts_at_the_sentence_that_was_being_spoken() -> None:
    assert unspoken_part(TEXT, 0.0) == TEXT
    first = len("The washing machine is done. ")
    assert unspoken_part(TEXT, (first - 5) / SPOKEN_CHARS_PER_SECOND) == TEXT
    assert unspoken_part(TEXT, (first + 3) / SPOKEN_CHARS_PER_SECOND) == (
        "Please empty it soon! Thank you."
    )
    assert unspoken_part(TEXT, 60.0) == "Thank you."  # past the end: the last sentence again


@given(st.text(max_size=300), st.floats(0, 100))
def test_resume_is_always_a_tail_of_whole_sentences(text: str, seconds: float) -> None:
    rest = unspoken_part(text, seconds)
    parts = sentences(text)
    if parts:
        assert rest in [" ".join(parts[i:]) for i in range(len(parts))]
    else:
        assert rest == text


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("  plain ASCII\t", "plain ASCII"),
        ("\u00a021\u00a0degrees\u202f", "21 degrees"),
        ("a\u2028b\u2029c\x85d", "a b c d"),
        ("soft\u00adhyphen\ufeff, zero\u200bwidth", "softhyphen, zerowidth"),
        ("\u2066isolated\u2069 \u202aembedded\u202c \u200eLTR\u200f", "isolated embedded LTR"),
        (FAMILY, FAMILY),
        (PERSIAN, PERSIAN),
        ("e\u200b\u0301", "\u00e9"),  # composed once the zero-width space is gone
        ("keep\nlines\r\nand\ttabs", "keep\nlines\r\nand\ttabs"),
        ("bell\x07 stays for the caller", "bell\x07 stays for the caller"),
    ],
)
def test_clean_text(text: str, cleaned: str) -> None:
    assert clean_text(text) == cleaned


def test_combining_marks_are_capped_even_where_nfc_composes_the_first() -> None:
    # "Z" and U+0301 compose to U+0179; the marks after it stay capped at the same number.
    for base in ("x", "Z"):
        cleaned = clean_text(base + "\u0301\u0316" * 3000 + " end")
        marks = [c for c in cleaned if unicodedata.combining(c)]
        assert len(marks) <= MAX_COMBINING_MARKS and cleaned.endswith(" end")


@pytest.mark.parametrize(
    ("text", "found"),
    [("fine\t\n\r", None), ("a\x00", "\x00"), ("\x1b[31m", "\x1b"), ("x\x7f\x9f", "\x7f")],
)
def test_first_control_character(text: str, found: str | None) -> None:
    assert first_control_character(text) == found


TRICKY = st.characters(categories=["Mn", "Me", "Cf", "Zs", "Zl", "Zp", "Cc", "Lu", "Ll", "Lo"])


@given(st.text() | st.text(TRICKY))
def test_cleaned_text_is_clean_and_cleaning_it_again_changes_nothing(text: str) -> None:
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert unicodedata.is_normalized("NFC", cleaned)
    assert cleaned == cleaned.strip(" \t\n\r")
    for char in cleaned:
        category = unicodedata.category(char)
        assert category not in ("Zs", "Zl", "Zp") or char == " "
        assert category != "Cf" or char in "\u200c\u200d"
        assert char != "\x85"
    run = 0
    for char in cleaned:
        run = run + 1 if unicodedata.category(char) in ("Mn", "Me") or char in "\u200c\u200d" else 0
        assert run <= MAX_COMBINING_MARKS


@given(st.text())
def test_first_control_character_is_category_cc_less_tab_and_line_ends(text: str) -> None:
    controls = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"]
    assert first_control_character(text) == (controls[0] if controls else None)
