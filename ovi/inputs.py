"""The rules every surface (REST body, query, path and headers, Socket.IO, CLI, csv) applies to the
plain values a client sends: text, integers and job references. One place, so the surfaces agree.

- Text is a str that encodes as UTF-8 (no lone surrogates: they cannot be stored, logged or
  written to a sidecar). Control characters: prompts (multi-line text) may hold tab, newline and
  carriage return, nothing else of Unicode category Cc (NUL, escape, DEL, C1 codes); names and
  ids hold none. Format characters (Cf, such as the zero-width joiner of emoji) are allowed.
- Integers are Python ints (never bools or floats), or text of ASCII digits with an optional
  leading '-' (no '+', spaces, '_' or other scripts' digits: '²' and '١' pass `str.isdigit()` but
  are refused here). Each has a stated range; anything the store keeps fits SQLite's int64.
- A job reference is the queue's integer id (1..2^63-1) or a client-chosen id.

Text is checked by `text_problem` (GenerateRequest's checkers use it, so every surface that builds a
request applies it); the other checks raise `ValueProblem` (an InputError) with `field` naming the
value, so REST answers 422/400 and the CLI exit 2 with the field named. Written by hand: the checks are a few lines each,
and pydantic's coercions (which accept '²' in some modes and floats as ints) are what is refused.
"""

from __future__ import annotations

import re
import unicodedata

from ovi.errors import InputError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# torch.Generator.manual_seed takes 0..2^64-1 (a larger value raises RuntimeError at run time).
SEED_MAX = 2**64 - 1
ID_MAX = INT64_MAX          # job ids, event sequence numbers, offsets: SQLite INTEGER
ALLOWED_CONTROLS = frozenset("\t\n\r")
_ASCII_INT = re.compile(r"-?[0-9]{1,40}")
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")


class ValueProblem(InputError):
    """A value a client sent breaks one of this module's rules; `field` names it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def text_problem(value: str, *, multiline: bool = True) -> str | None:
    """Why `value` is not acceptable text, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"character {exc.start} is a lone surrogate ({value[exc.start]!a}), not text; send "
                f"valid UTF-8")
    for index, char in enumerate(value):
        if unicodedata.category(char) == "Cc" and not (multiline and char in ALLOWED_CONTROLS):
            allowed = "tab, newline and carriage return" if multiline else "none"
            return (f"character {index} is the control character {char!a}; remove it (control "
                    f"characters allowed: {allowed})")
    return None


def check_int(field: str, value, *, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An int (or ASCII-digit text) within lo..hi."""
    if isinstance(value, str):
        if not _ASCII_INT.fullmatch(value):
            raise ValueProblem(field, f"{value[:40]!a} is not an integer; write it with the digits "
                                      f"0-9 (e.g. {max(lo, 0)})")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ValueProblem(field, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        shown = str(value) if len(str(value)) <= 30 else f"an integer of {len(str(value))} digits"
        raise ValueProblem(field, f"{shown} is out of range; use {lo}..{hi}")
    return value


def check_job_ref(field: str, value) -> int | str:
    """The queue's integer id (int or ASCII digits, 1..2^63-1) or a client id (URL-safe text).
    Digit text is an integer id only when no client id reads alike (the caller looks that up)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int(field, value, lo=1, hi=ID_MAX)
    if isinstance(value, str) and CLIENT_ID_PATTERN.fullmatch(value):
        return value
    raise ValueProblem(field, f"{str(value)[:40]!a} is not a job id; give the queue's number or "
                              f"the id chosen at submit (1-128 letters, digits or ._~:@-)")


def job_number(ref: int | str) -> int | None:
    """The integer id a checked reference reads as (ASCII digits within int64), else None."""
    if isinstance(ref, int):
        return ref if not isinstance(ref, bool) and 1 <= ref <= ID_MAX else None
    if _ASCII_INT.fullmatch(ref) and not ref.startswith("-") and 1 <= int(ref) <= ID_MAX:
        return int(ref)
    return None


def cli_int(lo: int = INT64_MIN, hi: int = INT64_MAX, name: str = "integer"):
    """An argparse `type=` that takes what check_int takes (argparse's `int` accepts '١', '+5',
    ' 5' and '1_000'), so a bad value is argparse's one-line error and exit 2."""
    import argparse

    def parse(text: str) -> int:
        try:
            return check_int(name, text, lo=lo, hi=hi)
        except ValueProblem as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    parse.__name__ = name
    return parse


def cli_number(lo: float, hi: float = float("inf"), name: str = "number"):
    """An argparse `type=` for a finite float in lo..hi (argparse's `float` takes 'nan' and 'inf')."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!a} is not a number") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text[:40]!a} is out of range; use {lo:g}..{hi:g}")
        return value

    parse.__name__ = name
    return parse


def sendable(value):
    """`value` with every lone surrogate in its text written as a backslash escape, so a message
    that echoes a client's bad text can itself be sent as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [sendable(v) for v in value]
    if isinstance(value, dict):
        return {sendable(k): sendable(v) for k, v in value.items()}
    return value


_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>|\s+at 0x[0-9a-fA-F]+")


def without_addresses(text: str) -> str:
    """A message without memory addresses (`<_io.BytesIO object at 0x7f...>`, PIL's wording)."""
    return _OBJECT_REPR.sub("", text)
