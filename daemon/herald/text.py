"""Sentences: where text may be split for a voice, and where a cut-off announcement resumes."""

from __future__ import annotations

import re

# Sentence ends: ASCII marks and the ellipsis before white space; the ideographic and fullwidth
# marks of CJK text, which is written without spaces, with or without it.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+|(?<=[\u3002\uff01\uff1f])\s*")

# How fast speech goes, roughly, in characters a second (about 165 words a minute).
SPOKEN_CHARS_PER_SECOND = 14.0


def sentences(text: str) -> list[str]:
    """The sentences of a text, whitespace folded, empty ones left out."""
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def unspoken_part(text: str, seconds_heard: float) -> str:
    """The text from the start of the sentence being spoken after `seconds_heard` of speech.

    The position is an estimate (SPOKEN_CHARS_PER_SECOND): voices do not say where each word
    falls. Starting at a sentence start means a resumed announcement never begins mid-word.
    """
    parts = sentences(text)
    position = seconds_heard * SPOKEN_CHARS_PER_SECOND
    consumed = 0
    for index, sentence in enumerate(parts):
        consumed += len(sentence) + 1
        if consumed > position:
            return " ".join(parts[index:])
    return parts[-1] if parts else text
