"""Lookalike domains: IDN (punycode) decoding, Unicode TR39 confusable skeletons and edit distance against
protected domains (the tenant's own and the shipped brands').

The skeleton maps every character to the ASCII character it is confusable with (``confusables.json`` of Unicode
TR39, shipped in ``confusable-homoglyphs``), after dropping accents, plus TR39's ASCII sequences (``rn`` → ``m``) and
the digits typosquatters use (``0`` → ``o``, ``1`` → ``l``). Two labels with the same skeleton look the same.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import confusable_homoglyphs
import idna
from confusable_homoglyphs import categories

from smtp.phishing.urls import domain_label, is_ip_host, registrable_domain

#: Shortest label compared by skeleton: three-letter labels collide with too many real names.
MIN_SKELETON_LABEL = 4
#: Shortest label for which one typing slip (a letter dropped or doubled, neighbours swapped, a neighbouring key)
#: counts as a lookalike; shorter real words sit one slip from each other too often (apple/apply, chase/chose).
MIN_EDIT_LABEL = 6
#: TR39 sequences of ASCII that read as another letter, digits used for letters, and i for l (``PayPaI``: a capital
#: I is an l in most fonts); applied after the map, to both sides of a comparison.
ASCII_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"), ("0", "o"), ("1", "l"), ("|", "l"), ("i", "l"))
#: QWERTY rows and how far each is shifted right, in key widths (a neighbouring key is a slip: ``paypak``).
_KEYBOARD_ROWS = (("1234567890", 0.0), ("qwertyuiop", 0.5), ("asdfghjkl", 0.75), ("zxcvbnm", 1.25))
#: Scripts TR39's "highly restrictive" level lets mix with Latin in one label (Japanese, Chinese, Korean).
CJK_SCRIPTS = frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"})
_IGNORED_SCRIPTS = frozenset({"COMMON", "INHERITED"})
_DIRECTION_MARKS = "\u200e\u200f"


@cache
def _confusable_map() -> dict[str, str]:
    """Non-ASCII character → the ASCII letters or digits it is confusable with (from TR39's table)."""
    path = Path(confusable_homoglyphs.__file__).resolve().parent / "confusables.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for char, entries in data.items():
        if len(char) != 1 or char.isascii():
            continue
        for entry in entries:
            target = str(entry.get("c", "")).strip(_DIRECTION_MARKS).lower()
            if target and target.isascii() and target.isalnum():
                out[char] = target
                break
    return out


def skeleton(text: str) -> str:
    """What ``text`` looks like, in ASCII where it can be: ``раураl`` (Cyrillic) and ``paypa1`` → ``paypal``."""
    mapping = _confusable_map()
    decomposed = unicodedata.normalize("NFKD", text.lower())
    chars = [mapping.get(c, c) for c in decomposed if not unicodedata.combining(c)]
    out = "".join(chars).lower()
    for seq, repl in ASCII_SEQUENCES:
        out = out.replace(seq, repl)
    return out


def decode_idn(host: str) -> str:
    """The Unicode form of a host (``xn--pypal-4ve.com`` → ``pаypal.com``); labels that do not decode stay."""
    out = []
    for label in host.lower().split("."):
        if label.startswith("xn--"):
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                try:
                    label = label.encode("ascii").decode("idna")
                except (UnicodeError, ValueError):
                    pass
        out.append(label)
    return ".".join(out)


def scripts_of(text: str) -> set[str]:
    """The Unicode scripts of the letters in ``text`` (digits, hyphens and marks ignored)."""
    try:
        return {s for s in categories.unique_aliases(text) if s not in _IGNORED_SCRIPTS}
    except (KeyError, ValueError):
        return set()


def punycode_trick(host: str) -> str | None:
    """Why an internationalised host deceives, or None: a label that mixes scripts (Latin with Cyrillic), or one in
    a non-Latin script whose every letter looks like ASCII (``аррӏе`` in Cyrillic reads as ``apple``)."""
    if "xn--" not in host:
        return None
    for label in host.lower().split("."):
        if not label.startswith("xn--"):
            continue
        shown = decode_idn(label)
        if shown == label:
            continue
        scripts = scripts_of(shown)
        if len(scripts) > 1 and not scripts <= CJK_SCRIPTS:
            return f"{label} shows as {shown!r}, mixing {' and '.join(sorted(s.title() for s in scripts))}"
        look = skeleton(shown)
        if scripts and scripts != {"LATIN"} and look.isascii() and any(c.isalpha() for c in look):
            return f"{label} shows as {shown!r} ({', '.join(sorted(s.title() for s in scripts))}), reads as {look!r}"
    return None


@cache
def _neighbours() -> dict[str, frozenset[str]]:
    """Each key's neighbours on a QWERTY keyboard: keys of its row and the rows above and below whose centres are
    at most one key width away."""
    keys = [(ch, r, c + shift) for r, (row, shift) in enumerate(_KEYBOARD_ROWS) for c, ch in enumerate(row)]
    return {k: frozenset(ch for ch, r2, x2 in keys if ch != k and abs(r2 - r) <= 1 and abs(x2 - x) <= 1.0)
            for k, r, x in keys}


def typo(candidate: str, target: str) -> str | None:
    """The typing slip that turns ``target`` into ``candidate``, or None: a letter dropped, a letter doubled or a
    hyphen added, two neighbours swapped, a neighbouring key. Other one-letter edits make real words too often
    (binance/finance, stripe/stripes), so they do not count."""
    if candidate == target:
        return None
    if len(candidate) == len(target) - 1:
        for i in range(len(target)):
            if target[:i] + target[i + 1:] == candidate:
                return f"{target[i]!r} dropped"
        return None
    if len(candidate) == len(target) + 1:
        for i in range(len(candidate)):
            if candidate[:i] + candidate[i + 1:] == target:
                extra = candidate[i]
                neighbours = candidate[max(i - 1, 0):i] + candidate[i + 1:i + 2]
                if extra == "-" or extra in neighbours:
                    return f"{extra!r} added"
                return None
        return None
    if len(candidate) != len(target):
        return None
    diff = [i for i in range(len(target)) if target[i] != candidate[i]]
    if len(diff) == 2 and diff[1] == diff[0] + 1 and candidate[diff[0]] == target[diff[1]] \
            and candidate[diff[1]] == target[diff[0]]:
        return f"{target[diff[0]:diff[1] + 1]!r} swapped"
    if len(diff) == 1 and candidate[diff[0]] in _neighbours().get(target[diff[0]], frozenset()):
        return f"{target[diff[0]]!r} typed as {candidate[diff[0]]!r}"
    return None


@dataclass(frozen=True)
class Target:
    """A protected registrable domain: what lookalikes imitate. ``owner`` names it in findings (a brand, a tenant)."""

    domain: str
    label: str
    skeleton: str
    owner: str


@dataclass(frozen=True)
class Lookalike:
    host: str
    target: Target
    how: str

    def describe(self) -> str:
        shown = decode_idn(self.host)
        name = self.host if shown == self.host else f"{self.host} ({shown})"
        return f"{name} imitates {self.target.domain} ({self.target.owner}): {self.how}"


class Targets:
    """Protected domains indexed for lookup: by domain, by skeleton, and by skeleton length (for typing slips), so a
    host costs a few dictionary lookups and a handful of comparisons, not one per protected domain."""

    def __init__(self, targets: Iterable[Target]) -> None:
        self.all = tuple(targets)
        self.domains = {t.domain: t for t in self.all}
        self.by_skeleton: dict[str, list[Target]] = {}
        self.by_length: dict[int, list[Target]] = {}
        for t in self.all:
            if len(t.label) >= MIN_SKELETON_LABEL:
                self.by_skeleton.setdefault(t.skeleton, []).append(t)
            if len(t.label) >= MIN_EDIT_LABEL:
                self.by_length.setdefault(len(t.skeleton), []).append(t)

    def __len__(self) -> int:
        return len(self.all)


def make_targets(domains: Iterable[str], owner: str) -> tuple[Target, ...]:
    """Targets for the registrable domains of ``domains`` (one per distinct domain)."""
    out: dict[str, Target] = {}
    for d in domains:
        reg = registrable_domain(d.lower().rstrip("."))
        if not reg or is_ip_host(reg) or reg in out:
            continue
        label = decode_idn(domain_label(reg))
        out[reg] = Target(reg, label, skeleton(label), owner)
    return tuple(out.values())


def find_lookalike(host: str, targets: Targets) -> Lookalike | None:
    """The protected domain ``host`` imitates, or None when it is one of them (or a subdomain) or imitates none.

    The very same name under another suffix (``acme.de`` for ``acme.com``) is not flagged: brands own dozens of
    country domains, and organisations their sister companies' domains, that Mailward cannot know.
    """
    host = host.lower().rstrip(".")
    if not host or is_ip_host(host) or not targets:
        return None
    reg = registrable_domain(host)
    if reg in targets.domains:
        return None
    label = decode_idn(domain_label(reg))
    labels = host.split(".")
    for i in range(len(labels) - 1):  # a protected domain spelled out inside a foreign host: paypal.com.evil.example
        for j in range(i + 2, len(labels)):
            t = targets.domains.get(".".join(labels[i:j]))
            if t is not None and t.label != label:
                return Lookalike(host, t, f"{t.domain} is only a part of the host name")
    # Words of a hyphenated name are compared too (``micr0soft-support``), but only as lookalikes: the brand's
    # exact name in a longer one (``amazon-adsystem``) is too often the brand's own or a partner's.
    for part in dict.fromkeys([label, *(label.split("-") if "-" in label else [])]):
        if not part:
            continue
        found = _imitated(part, targets)
        if found is not None:
            t, how = found
            return Lookalike(host, t, how if part == label else f"{part!r} {how}")
    return None


def _imitated(label: str, targets: Targets) -> tuple[Target, str] | None:
    """The target ``label`` imitates and how, or None (a target's very own label is no imitation)."""
    look = skeleton(label)
    for t in targets.by_skeleton.get(look, ()):
        if t.label != label:
            return t, "looks the same (confusable characters)"
    for size in (len(look) - 1, len(look), len(look) + 1):
        for t in targets.by_length.get(size, ()):
            if t.label == label:
                continue
            slip = typo(look, t.skeleton)
            if slip is not None:
                return t, f"one typing slip ({slip})"
    return None
