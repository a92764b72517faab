"""Display names that claim who the sender is: a brand whose domains the address is not at (``"Microsoft 365"
<it@x.example>``), or a colleague of the recipient's organisation while the mail comes from outside."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from smtp.phishing.brands import Brand
from smtp.phishing.lookalike import skeleton
from smtp.phishing.urls import registrable_domain, within

#: Characters of a display name quoted in a finding.
MAX_QUOTED = 60
_ADDRESS = re.compile(r"[a-z0-9._%+-]+@((?:[a-z0-9-]+\.)+[a-z]{2,})", re.I)
_NAME_TOKEN = re.compile(r"[^\W\d_]{2,}")
#: Separators between the parts of a person's name in a local part (``john.smith``, ``john_smith``).
_LOCAL_SEPARATORS = re.compile(r"[._-]")


@dataclass(frozen=True)
class BrandPattern:
    brand: Brand
    #: Aliases as skeletons, matched as whole words in a display name's skeleton.
    pattern: re.Pattern[str]


@cache
def brand_patterns(brands: tuple[Brand, ...]) -> tuple[BrandPattern, ...]:
    out = []
    for brand in brands:
        alternatives = "|".join(sorted({r"\s+".join(map(re.escape, skeleton(a).split())) for a in brand.aliases},
                                       key=len, reverse=True))
        out.append(BrandPattern(brand, re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])")))
    return tuple(out)


def quoted(name: str) -> str:
    name = " ".join(name.split())
    return repr(name if len(name) <= MAX_QUOTED else name[:MAX_QUOTED] + "…")


def display_brand(display_name: str, sender_domain: str, brands: tuple[Brand, ...]) -> str | None:
    """Evidence when the display name claims a brand the sender's domain does not belong to, else None."""
    if not display_name.strip() or not sender_domain:
        return None
    look = " ".join(skeleton(display_name).split())
    plain = " ".join(display_name.lower().split())
    for bp in brand_patterns(brands):
        found = bp.pattern.search(look)
        if found is None or bp.brand.owns(sender_domain):
            continue
        disguised = not any(re.search(rf"(?<![a-z0-9]){re.escape(a)}(?![a-z0-9])", plain) for a in bp.brand.aliases)
        how = " (written with lookalike characters)" if disguised else ""
        return (f"display name {quoted(display_name)} claims {bp.brand.name}{how} but sender domain "
                f"{sender_domain} is not {bp.brand.name}'s")
    return None


def name_key(text: str) -> str:
    """A person's name in a comparable form: ``"Smith, John"``, ``John  SMITH`` and ``john.smith`` → ``john smith``."""
    text = text.strip().strip("'\"").lower()
    if "," in text:
        last, _, first = text.partition(",")
        text = f"{first} {last}"
    return " ".join(_NAME_TOKEN.findall(_LOCAL_SEPARATORS.sub(" ", text)))


def colleague_names(addresses: Iterable[str]) -> dict[str, str]:
    """Name key → address for the addresses whose local part is a person's name of two or more parts."""
    out: dict[str, str] = {}
    for address in addresses:
        local = address.rpartition("@")[0]
        if not _LOCAL_SEPARATORS.search(local):
            continue
        key = name_key(local)
        if len(key.split()) >= 2:
            out.setdefault(key, address.lower())
    return out


def display_colleague(display_name: str, sender_address: str, own_domains: frozenset[str],
                      colleagues: Mapping[str, str], rcpts: Iterable[str]) -> str | None:
    """Evidence when an outside sender's display name is an address of the organisation's own domains or the name
    of one of its people (not the recipient's own: writing to oneself from a private address is common)."""
    sender_domain = sender_address.rpartition("@")[2].lower()
    if not display_name.strip() or not sender_domain or not own_domains:
        return None
    own = frozenset(registrable_domain(d) for d in own_domains) | own_domains
    if within(sender_domain, own) or within(registrable_domain(sender_domain), own):
        return None
    for found in _ADDRESS.finditer(display_name):
        if within(found.group(1).lower(), own):
            return (f"display name {quoted(display_name)} shows an address of {found.group(1).lower()}, but the mail "
                    f"comes from outside: {sender_address}")
    address = colleagues.get(name_key(display_name))
    if address is not None and address not in {r.lower() for r in rcpts}:
        return (f"display name {quoted(display_name)} is the name of {address}, but the mail comes from outside: "
                f"{sender_address}")
    return None
