"""Text for a voice: how received text is cleaned, where it may be split into sentences, and
where a cut-off announcement resumes.
"""

from __future__ import annotations

import re
import unicodedata

# Sentence ends: ASCII marks and the ellipsis before white space; the ideographic and fullwidth
# marks of CJK text, which is written without spaces, with or without it.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+|(?<=[\u3002\uff01\uff1f])\s*")

# How fast speech goes, roughly, in characters a second (about 165 words a minute).
SPOKEN_CHARS_PER_SECOND = 14.0

# Real scripts stack a few marks on a letter (Vietnamese 2, Hebrew with cantillation or Tibetan
# stacks about 4-6); thousands ("Zalgo" text) only cost memory in every layer that shapes text.
MAX_COMBINING_MARKS = 8

# The joiners are format characters that carry meaning: they build emoji sequences (family,
# profession) and choose letter forms in Indic scripts and Persian. Every other format character
# (soft hyphen, BOM, zero-width space, word joiner, bidi marks and isolates, tags) is invisible.
_JOINERS = frozenset("\u200c\u200d")
_COMBINING = frozenset({"Mn", "Me"})
_SEPARATORS = frozenset({"Zs", "Zl", "Zp"})
_STRIPPED = " \t\n\r"  # at the ends; every other space is a plain space by then

# Category Cc, a fixed set in every Unicode version, less tab, line feed and carriage return.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """The words as a voice, the journal and the phrase cache should see them.

    Every Unicode space and separator (no-break and narrow no-break space, U+2028/U+2029, NEL
    U+0085) becomes a plain space; tab, line feed and carriage return stay as they are (the
    voice folds white space into sentences itself). Invisible format characters are dropped,
    except the joiners U+200C/U+200D. A run of combining marks is cut to MAX_COMBINING_MARKS.
    The result is in NFC with no space, tab or line break at its ends. Control characters are
    left in for the caller to refuse (first_control_character). clean_text(clean_text(t))
    equals clean_text(t).
    """
    if text.isascii():  # no other spaces, no format characters, no marks: nothing to change
        return text.strip(_STRIPPED)
    visible = _cap_combining_marks(_visible_characters(text))
    # Capping first bounds the work of NFC's reordering; capping again keeps the cap where NFC
    # took a precomposed letter apart into a base and its marks.
    normalized = _cap_combining_marks(unicodedata.normalize("NFC", visible))
    return normalized.strip(_STRIPPED)


def first_control_character(text: str) -> str | None:
    """The first control character other than tab, line feed or carriage return, if any."""
    found = _CONTROL.search(text)
    return None if found is None else found.group()


def _visible_characters(text: str) -> str:
    """The text with every space or separator a plain space and the invisible ones left out."""
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category in _SEPARATORS or char == "\x85":
            kept.append(" ")
        elif category != "Cf" or char in _JOINERS:
            kept.append(char)
    return "".join(kept)


def _cap_combining_marks(text: str) -> str:
    """The text with at most MAX_COMBINING_MARKS marks or joiners after each base character.

    Joiners count with the marks: they extend a grapheme cluster too, so marks interleaved with
    joiners would otherwise make one unbounded cluster.
    """
    kept: list[str] = []
    run = 0
    for char in text:
        if char in _JOINERS or unicodedata.category(char) in _COMBINING:
            run += 1
            if run > MAX_COMBINING_MARKS:
                continue
        else:
            run = 0
        kept.append(char)
    return "".join(kept)


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
