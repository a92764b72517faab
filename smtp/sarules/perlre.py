"""Perl regular expressions, as SpamAssassin's rules write them, translated into Python ``re`` (bytes) patterns.

Rules match bytes (UTF-8 text and raw octets, as SpamAssassin does), so patterns compile as bytes: the rule files
are read as Latin-1, one character per byte. What differs is rewritten (``\\z``, ``\\Z``, ``(?<name>``, ``\\h``,
``\\R``, ``\\Q..\\E``, POSIX classes, a mid-pattern ``(?i)``, ``{,n}``, unknown letter escapes); what Python cannot
do (``\\p{..}``, ``\\K``, ``\\G``, branch reset, variable-width look-behind) raises :class:`Untranslatable`, and
the rule is skipped and listed in the load report.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

#: Perl modifiers that change matching; ``g`` and ``o`` change nothing for a yes/no test and are dropped.
_FLAG_BITS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_IGNORED_FLAGS = frozenset("goadlun")
_OPENERS = {"{": "}", "(": ")", "[": "]", "<": ">"}
#: POSIX bracket classes as byte ranges.
_POSIX = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": r" \t\n\r\f\x0b", "blank": r" \t", "punct": r"!-/:-@\[-`{-~", "xdigit": "0-9A-Fa-f",
    "word": "a-zA-Z0-9_", "cntrl": r"\x00-\x1f\x7f", "print": r"\x20-\x7e", "graph": r"\x21-\x7e",
    "ascii": r"\x00-\x7f",
}
#: Escapes Python's bytes patterns know as they are.
_PY_ESCAPES = frozenset("abBdDfnrsStvwWAZ0123456789x")
_SIMPLE = {"h": r"[ \t]", "H": r"[^ \t]", "v": r"[\n\x0b\f\r]", "V": r"[^\n\x0b\f\r]", "z": r"\Z",
           "Z": r"(?=\n?\Z)", "R": r"(?:\r\n|[\n\x0b\f\r])", "e": r"\x1b", "N": r"[^\n]"}
_CLASS_SIMPLE = {"h": r" \t", "v": r"\n\x0b\f\r", "e": r"\x1b"}
_UNSUPPORTED = {"p": r"\p{...} (Unicode properties)", "P": r"\P{...} (Unicode properties)", "K": r"\K",
                "G": r"\G", "X": r"\X", "C": r"\C", "g": r"\g (relative back-reference)", "l": r"\l", "u": r"\u",
                "L": r"\L", "U": r"\U", "E": r"\E without \Q"}


class Untranslatable(ValueError):
    """A Perl pattern Python cannot run; the message is the reason shown in the load report."""


@dataclass(frozen=True)
class PerlRegex:
    """A rule's regex split into its pattern (Perl text) and modifiers."""

    source: str
    flags: str


def split_regex(text: str) -> PerlRegex:
    """``/re/flags``, ``m{re}flags`` or ``m!re!flags`` into pattern and modifiers."""
    text = text.strip()
    if text.startswith("m") and len(text) > 1 and not text[1].isalnum() and not text[1].isspace():
        opener = text[1]
        body = text[2:]
    elif text.startswith("/"):
        opener, body = "/", text[1:]
    else:
        raise Untranslatable(f"not a regex: {text[:40]!r}")
    closer = _OPENERS.get(opener, opener)
    m = re.search(r"(?<!\\)((?:\\\\)*)" + re.escape(closer) + r"([a-z]*)\s*$", body)
    if m is None:
        raise Untranslatable(f"regex without its closing {closer!r}")
    source = body[:m.start()] + m.group(1)
    return PerlRegex(source, m.group(2))


# Complexity (C901) by design: a tokenizer: one branch per escape.
def _class_body(src: str, i: int) -> tuple[str, int]:  # noqa: C901
    """Translate a bracket class starting after ``[``; returns the Python text (without brackets) and the index after
    the closing ``]``."""
    out: list[str] = []
    n = len(src)
    if i < n and src[i] == "^":
        out.append("^")
        i += 1
    first = True
    while i < n:
        c = src[i]
        if c == "]" and not first:
            return "".join(out), i + 1
        first = False
        if c == "[" and src.startswith("[:", i):
            end = src.find(":]", i + 2)
            if end < 0:
                raise Untranslatable("unterminated POSIX class")
            name = src[i + 2:end]
            negated = name.startswith("^")
            name = name.lstrip("^")
            if name not in _POSIX:
                raise Untranslatable(f"POSIX class [:{name}:]")
            if negated:
                raise Untranslatable(f"negated POSIX class [:^{name}:] inside a class")
            out.append(_POSIX[name])
            i = end + 2
            continue
        if c == "\\" and i + 1 < n:
            e = src[i + 1]
            if e == "x" and i + 2 < n and src[i + 2] == "{":
                end = src.find("}", i + 3)
                out.append(_hex_brace(src[i + 3:end]))
                i = end + 1
                continue
            if e in _CLASS_SIMPLE:
                out.append(_CLASS_SIMPLE[e])
            elif e in ("p", "P"):
                raise Untranslatable(_UNSUPPORTED[e])
            elif e == "c" and i + 2 < n:
                out.append(f"\\x{ord(src[i + 2].upper()) ^ 64:02x}")
                i += 3
                continue
            elif e.isalpha() and e not in _PY_ESCAPES:
                out.append(re.escape(e))
            else:
                out.append(src[i:i + 2])
            i += 2
            continue
        if c in "[&~|-" and c != "-":
            out.append("\\" + c)  # Python warns about (and may one day read) nested sets and set operators
        elif c == "-" and i + 1 < n and src[i + 1] == "-":
            out.append("\\-")
        else:
            out.append(c)
        i += 1
    raise Untranslatable("unterminated character class")


def _hex_brace(digits: str) -> str:
    try:
        value = int(digits.strip() or "0", 16)
    except ValueError as exc:
        raise Untranslatable(f"bad \\x{{{digits}}}") from exc
    if value <= 0xFF:
        return f"\\x{value:02x}"
    return "".join(f"\\x{b:02x}" for b in chr(value).encode("utf-8"))


_INLINE_FLAGS = re.compile(r"\(\?([a-z]*)(?:-([a-z]*))?\)")
_QUANT_BRACE = re.compile(r"\{(\d+)(,(\d*))?\}")


# Complexity (C901) by design: a translator: one branch per Perl construct.
def translate(source: str) -> str:  # noqa: C901
    """The Python spelling of a Perl pattern (no modifiers); raises :class:`Untranslatable`."""
    out: list[str] = []
    #: For each open group: the scoped-flag groups opened inside it by a mid-pattern ``(?i)`` (their flag text).
    groups: list[list[str]] = [[]]
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 >= n:
                raise Untranslatable("trailing backslash")
            e = source[i + 1]
            if e == "Q":
                end = source.find("\\E", i + 2)
                literal = source[i + 2:end if end >= 0 else n]
                out.append(re.escape(literal))
                i = end + 2 if end >= 0 else n
                continue
            if e in _UNSUPPORTED:
                raise Untranslatable(_UNSUPPORTED[e])
            if e == "k" and i + 2 < n and source[i + 2] in "<{'":
                close = {"<": ">", "{": "}", "'": "'"}[source[i + 2]]
                end = source.find(close, i + 3)
                out.append(f"(?P={source[i + 3:end]})")
                i = end + 1
                continue
            if e == "x" and i + 2 < n and source[i + 2] == "{":
                end = source.find("}", i + 3)
                if end < 0:
                    raise Untranslatable("unterminated \\x{")
                out.append(_hex_brace(source[i + 3:end]))
                i = end + 1
                continue
            if e == "c" and i + 2 < n:
                out.append(f"\\x{ord(source[i + 2].upper()) ^ 64:02x}")
                i += 3
                continue
            if e == "o" and i + 2 < n and source[i + 2] == "{":
                end = source.find("}", i + 3)
                out.append(f"\\x{int(source[i + 3:end], 8) & 0xFF:02x}")
                i = end + 1
                continue
            if e in _SIMPLE:
                out.append(_SIMPLE[e])
            elif e.isalpha() and e not in _PY_ESCAPES:
                out.append(re.escape(e))  # Perl reads an unknown letter escape as the letter
            else:
                out.append(source[i:i + 2])
            i += 2
            continue
        if c == "[":
            body, i = _class_body(source, i + 1)
            out.append("[" + body + "]")
            continue
        if c == "(":
            if source.startswith("(?#", i):
                end = source.find(")", i)
                i = end + 1 if end >= 0 else n
                continue
            if source.startswith("(?<", i) and i + 3 < n and source[i + 3] not in "=!":
                out.append("(?P<")
                groups.append([])
                i += 3
                continue
            if source.startswith("(?P>", i) or source.startswith("(?&", i) or source.startswith("(?R)", i) \
                    or re.match(r"\(\?[+-]?\d", source[i:]):
                raise Untranslatable("recursion / subroutine call")
            if source.startswith("(?|", i):
                raise Untranslatable("branch reset (?|...)")
            if source.startswith("(?^", i):
                raise Untranslatable("(?^...) flag reset")
            m = _INLINE_FLAGS.match(source, i)
            if m is not None and (m.group(1) or m.group(2)):
                on, off = m.group(1), m.group(2) or ""
                if set(on + off) - set(_FLAG_BITS):
                    raise Untranslatable(f"inline flags (?{on}-{off})")
                at_start = not "".join(out) and len(groups) == 1
                if at_start and not off:
                    out.append(m.group(0))
                else:
                    # Python allows global flags only at the start: scope them to the rest of the enclosing group.
                    scoped = f"{on}{'-' + off if off else ''}"
                    out.append(f"(?{scoped}:")
                    groups[-1].append(scoped)
                i = m.end()
                continue
            groups.append([])
            out.append("(")
            i += 1
            continue
        if c == ")":
            if len(groups) == 1:
                raise Untranslatable("unbalanced parenthesis")
            out.append(")" * len(groups.pop()))
            out.append(")")
            i += 1
            continue
        if c == "|" and groups[-1]:
            # Perl's (?i) reaches over later alternatives to the end of its group: close the scope, reopen it after
            out.append(")" * len(groups[-1]) + "|" + "".join(f"(?{f}:" for f in groups[-1]))
            i += 1
            continue
        if c == "{":
            m = _QUANT_BRACE.match(source, i)
            if m is None:
                out.append("\\{")  # a literal brace (Perl reads ``{,n}`` and ``{x}`` literally)
                i += 1
                continue
            out.append(m.group(0))
            i = m.end()
            continue
        if c == "}":
            out.append("\\}")
            i += 1
            continue
        out.append(c)
        i += 1
    if len(groups) != 1:
        raise Untranslatable("unbalanced parenthesis")
    out.append(")" * len(groups[0]))
    return "".join(out)


def flag_bits(flags: str) -> int:
    """``re`` flags of Perl modifiers; an unknown modifier raises :class:`Untranslatable`."""
    bits = 0
    for letter in flags:
        if letter in _FLAG_BITS:
            bits |= _FLAG_BITS[letter]
        elif letter not in _IGNORED_FLAGS:
            raise Untranslatable(f"modifier /{letter}")
    return bits


def compile_perl(source: str, flags: str, *, extra: int = 0) -> re.Pattern[bytes]:
    """A Perl pattern and its modifiers compiled as a Python bytes pattern; raises :class:`Untranslatable`."""
    python = translate(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(python.encode("latin-1"), flag_bits(flags) | extra)
    except re.error as exc:
        raise Untranslatable(f"Python re: {exc.msg}") from exc
    except (UnicodeEncodeError, OverflowError, RecursionError) as exc:
        raise Untranslatable(f"Python re: {type(exc).__name__}") from exc
