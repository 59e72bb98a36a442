"""Text from outside (an MQTT publisher, a file name) made safe to show in one log line.

A value shown with `shown` cannot start a new line, move the cursor, recolour the terminal or
reorder what follows it: every character that is not printable is written as the escape Python
would use in a string literal (`\\n`, `\\x1b`, `\\u202e`), a backslash is doubled so an escape
cannot be forged, and the result is cut short so one value cannot flood the log.
"""

from __future__ import annotations

import urllib.parse

SHOWN_CHARS = 80  # how much of a value a log line shows
ELLIPSIS = "…"

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """`value` on one line: non-printable characters escaped, cut to about `limit` characters.

    The result is at most `limit` characters, plus `…` when something was left off; an escape
    is never cut in half.
    """
    pieces: list[str] = []
    length = 0
    for char in value:
        piece = _escaped(char)
        if length + len(piece) > limit:
            return "".join(pieces) + ELLIPSIS
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


SHOWN_URL_CHARS = 160  # how much of a URL a message shows


def where(url: str) -> str:
    """`url` as scheme://host[:port]/path: no userinfo, query string or fragment, on one line.

    Never raises: a URL too broken to split shows as much of it as is safe.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return "an unreadable URL"
    netloc = parts.netloc.rpartition("@")[2]  # the userinfo goes, whatever the port says
    try:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # an IPv6 address
        port = parts.port
        authority = host if port is None else f"{host}:{port}"
    except ValueError:  # a port that is not a number: show the host and port as written
        authority = netloc
    scheme = f"{parts.scheme.lower()}://" if parts.scheme else ""
    return shown(f"{scheme}{authority}{parts.path}", SHOWN_URL_CHARS)


def where_host(url: str) -> str:
    """`url` as scheme://host[:port] alone: for media from Home Assistant, whose proxy puts a
    token in the path (and signed URLs one in the query)."""
    place = where(url)
    scheme, separator, rest = place.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if separator else place.split("/", 1)[0]
