"""The shipped brand list (``data/brands.toml``): who phishing impersonates, and the domains that really are them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from smtp.phishing.urls import within

BRANDS_PATH = Path(__file__).resolve().parent / "data" / "brands.toml"


@dataclass(frozen=True, eq=False)  # hashed by identity: brand lists are cache keys, loaded once
class Brand:
    name: str
    #: Lower-case words a display name or link uses to claim the brand.
    aliases: tuple[str, ...]
    #: The brand's own domains, main one first (subdomains included when matching).
    domains: tuple[str, ...]

    def owns(self, host: str) -> bool:
        """True when ``host`` (a domain or host name) is one of the brand's domains or under one."""
        return within(host.lower().rstrip("."), frozenset(self.domains))


@cache
def load_brands(path: Path = BRANDS_PATH) -> tuple[Brand, ...]:
    """Every brand of the list; a malformed file fails at start (the check builds it once), not on a mail."""
    data = tomllib.loads(path.read_text())
    out = []
    for entry in data.get("brand", []):
        domains = tuple(dict.fromkeys(d.lower().rstrip(".") for d in entry["domains"]))
        aliases = tuple(a.lower() for a in entry.get("aliases", [])) or (entry["name"].lower(),)
        if not domains:
            raise ValueError(f"{path.name}: brand {entry['name']} has no domains")
        out.append(Brand(str(entry["name"]), aliases, domains))
    return tuple(out)


@cache
def _owners(brands: tuple[Brand, ...]) -> dict[str, Brand]:
    return {d: b for b in reversed(brands) for d in b.domains}


def brand_owning(host: str, brands: tuple[Brand, ...]) -> Brand | None:
    """The brand a host belongs to, if any (one dictionary lookup per label of the host)."""
    owners = _owners(brands)
    labels = host.lower().rstrip(".").split(".")
    return next((owners[s] for s in (".".join(labels[i:]) for i in range(len(labels))) if s in owners), None)
