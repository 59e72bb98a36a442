"""Sentences and where a cut-off announcement resumes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from herald.text import SPOKEN_CHARS_PER_SECOND, sentences, unspoken_part

TEXT = "The washing machine is done. Please empty it soon! Thank you."


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
