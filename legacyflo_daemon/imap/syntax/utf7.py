"""IMAP modified UTF-7 (RFC 3501 §5.1.3), the wire form of mailbox names.

Owns: ``encode`` (Unicode name → wire name) and ``decode`` (wire name → Unicode name).
Must not: know about hierarchy delimiters, quoting or any other IMAP syntax; a name is handled
as one opaque string (callers split on the delimiter first or afterwards, both work because
the encoded form of a delimiter character is itself).

The rules, in short: printable US-ASCII except ``&`` (0x20-0x25, 0x27-0x7E) stands for itself;
``&`` is written ``&-``; every other run of characters is UTF-16BE (surrogate pairs for
characters beyond the BMP), base64 with ``,`` instead of ``/`` and no ``=`` padding, written
between ``&`` and ``-``.

``decode`` is strict about what would make the name ambiguous or unreadable (raw non-ASCII or
control characters, bad base64, an odd number of bytes, non-zero padding bits, broken surrogate
pairs, a missing ``-``) and raises ``ValueError`` naming the problem and its position. It accepts
non-canonical but unambiguous forms (printable ASCII inside a base64 run, two adjacent runs)
because a server may produce them and they still name exactly one mailbox.
"""

from __future__ import annotations

import binascii
import re

_B64_STD = "+/"
_B64_IMAP = "+,"
_TO_IMAP = str.maketrans(_B64_STD, _B64_IMAP)
_FROM_IMAP = str.maketrans(_B64_IMAP, _B64_STD)
_B64_RUN = re.compile(r"[A-Za-z0-9+,]*")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"


def _is_direct(ch: str) -> bool:
    """True if ``ch`` is written as itself (printable ASCII other than ``&``)."""
    return "\x20" <= ch <= "\x7e" and ch != "&"


def _encode_run(run: str) -> str:
    try:
        raw = run.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        # Only lone surrogates can fail here; they are not characters and cannot be sent.
        raise ValueError(
            f"cannot encode mailbox name: lone surrogate U+{ord(run[exc.start]):04X}"
        ) from exc
    b64 = binascii.b2a_base64(raw, newline=False).decode("ascii").rstrip("=")
    return "&" + b64.translate(_TO_IMAP) + "-"


def encode(name: str) -> str:
    """Encode a Unicode mailbox name into modified UTF-7.

    The result is printable ASCII, and ``&`` appears only to start a run (``&-`` for a literal
    ``&``). Raises ``ValueError`` for a string containing a lone surrogate.
    """
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if run:
                out.append(_encode_run("".join(run)))
                run.clear()
            out.append(ch)
        elif ch == "&":
            if run:
                out.append(_encode_run("".join(run)))
                run.clear()
            out.append("&-")
        else:
            run.append(ch)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(name: str, start: int, b64: str) -> str:
    """Decode the base64 run ``b64`` that begins at index ``start`` (just after ``&``)."""
    where = f"in mailbox name {name!r} at position {start - 1}"
    leftover_bits = (len(b64) * 6) % 8
    if leftover_bits == 6:
        # 6n mod 8 == 6 means one base64 character carries no complete byte: never produced.
        raise ValueError(f"bad modified UTF-7 {where}: base64 run has a superfluous character")
    padded = b64.translate(_FROM_IMAP) + "=" * (-len(b64) % 4)
    try:
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"bad modified UTF-7 {where}: invalid base64 ({exc})") from exc
    if leftover_bits and _B64_ALPHABET.index(b64[-1]) & ((1 << leftover_bits) - 1):
        raise ValueError(f"bad modified UTF-7 {where}: non-zero padding bits in base64 run")
    if len(raw) % 2:
        raise ValueError(f"bad modified UTF-7 {where}: odd number of UTF-16 bytes")
    try:
        return raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad modified UTF-7 {where}: invalid UTF-16 ({exc.reason})") from exc


def decode(name: str) -> str:
    """Decode a modified UTF-7 wire name into Unicode.

    ``&-`` is ``&``. Raises ``ValueError`` (message names the position) for: a character outside
    printable ASCII, an ``&`` run that is not closed by ``-``, invalid base64, a run that does
    not decode to whole, valid UTF-16 code units (odd byte count, lone surrogate, non-zero
    padding bits).
    """
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if ch == "&":
            m = _B64_RUN.match(name, i + 1)
            assert m is not None  # the pattern matches the empty string
            end = m.end()
            if end >= n or name[end] != "-":
                if end < n:
                    bad = name[end]
                    raise ValueError(
                        f"bad modified UTF-7 in mailbox name {name!r} at position {end}: "
                        f"{bad!r} is not allowed in a base64 run (expected '-' to end it)"
                    )
                raise ValueError(
                    f"bad modified UTF-7 in mailbox name {name!r}: '&' at position {i} "
                    "is not terminated by '-'"
                )
            b64 = m.group()
            out.append("&" if not b64 else _decode_run(name, i + 1, b64))
            i = end + 1
        elif _is_direct(ch):
            out.append(ch)
            i += 1
        else:
            what = "non-ASCII" if ord(ch) > 0x7F else "control"
            raise ValueError(
                f"bad modified UTF-7 in mailbox name {name!r} at position {i}: "
                f"{what} character {ch!r} must be base64-encoded"
            )
    return "".join(out)
