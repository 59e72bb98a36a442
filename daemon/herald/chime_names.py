"""Which chimes may be named, judged by the name alone: no file is opened, nothing is imported.

The config file is trusted: a priority's chime is a built-in name or the absolute path of any
WAV file. A payload is not: its chime is a built-in name, or a WAV file directly in the
chimes directory (`audio.chimes_dir`), named by its file name (`doorbell.wav`) or by its
absolute path. These checks are lexical; `herald.audio.chimes` checks again when it opens the
file (no symbolic link or `..` may lead out of the directory).
"""

from __future__ import annotations

from pathlib import PurePath

from herald.logsafe import shown

BUILTIN_CHIMES: tuple[str, ...] = ("soft", "bell", "alert", "alarm")


def validate_chime_spec(spec: str) -> str:
    """Return `spec` if it names a built-in chime or an absolute .wav path; else ValueError.

    For the config file, which may name any WAV file. The file is not opened.
    """
    if spec in BUILTIN_CHIMES:
        return spec
    if looks_like_path(spec) and not PurePath(spec).is_absolute():
        raise ValueError(relative_chime(spec))
    if not (PurePath(spec).is_absolute() and is_wav_name(spec)):
        raise ValueError(unknown_chime(spec))
    return spec


def payload_chime(spec: str, chimes_dir: PurePath | None) -> str:
    """The chime a payload may name: a built-in name as it is, or the absolute path of a WAV
    file directly in `chimes_dir` (given by its file name or by that path); else ValueError.

    `chimes_dir` None: a payload may name built-in chimes only. The file is not opened.
    """
    if spec in BUILTIN_CHIMES:
        return spec
    if not looks_like_path(spec):
        raise ValueError(unknown_chime(spec))
    if chimes_dir is None:
        names = ", ".join(BUILTIN_CHIMES)
        raise ValueError(
            f"chime '{shown(spec)}': not a built-in chime ({names}), and no chimes directory "
            "is set for WAV files"
        )
    if not is_wav_name(spec):
        raise ValueError(unknown_chime(spec))
    path = PurePath(spec) if _has_directory(spec) else chimes_dir / spec
    if path.parent != chimes_dir:
        raise ValueError(
            f"chime '{shown(spec)}': a payload may name only a WAV file in "
            f"{shown(str(chimes_dir))} (by its file name or its absolute path)"
        )
    return str(path)


def unknown_chime(spec: str) -> str:
    """The message for a chime that is neither a built-in name nor a WAV file."""
    names = ", ".join(BUILTIN_CHIMES)
    return f"chime '{shown(spec)}': not a built-in chime ({names}) nor a WAV file"


def relative_chime(spec: str) -> str:
    """The message for a chime given as a relative path where an absolute one is needed."""
    return f"chime '{shown(spec)}': give an absolute path"


def looks_like_path(spec: str) -> bool:
    """Whether `spec` was meant as a file rather than a chime name."""
    return _has_directory(spec) or is_wav_name(spec)


def is_wav_name(spec: str) -> bool:
    return spec.lower().endswith(".wav")


def _has_directory(spec: str) -> bool:
    return "/" in spec
