"""Blocking DNS lookups for the web and CLI (domain verification, DNS readiness), on ``MAILWARD_DNS``.

The same resolver configuration as :mod:`smtp.dns`, rebuilt here because ``tenants`` imports no other package; the
egress policy (:mod:`tenants.egress`) resolves with these resolvers too.
A name that does not exist, or has no records of the type, is an empty answer; anything else (timeout, SERVFAIL,
no server) raises :class:`LookupFailed`, which the callers show as "could not check".
"""

from __future__ import annotations

from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.resolver

from tenants.platform.config import Config

#: Seconds one lookup of the readiness checks may take (the page waits at most this long: lookups run concurrently).
LOOKUP_TIMEOUT = 3.0

_Resolver = TypeVar("_Resolver", bound=dns.resolver.BaseResolver)


class LookupFailed(Exception):
    """DNS gave no usable answer (timeout, SERVFAIL, no resolver): the record's state is unknown."""


def _configured(r: _Resolver, cfg: Config, lifetime: float) -> _Resolver:
    if cfg.dns is not None:
        r.nameservers = [cfg.dns.host]
        r.port = cfg.dns.port
    r.lifetime = lifetime
    r.timeout = lifetime
    return r


def resolver(cfg: Config, lifetime: float | None = None) -> dns.resolver.Resolver:
    """A blocking resolver on ``MAILWARD_DNS`` (or the system's resolvers when unset), no cache."""
    lifetime = LOOKUP_TIMEOUT if lifetime is None else lifetime
    return _configured(dns.resolver.Resolver(configure=cfg.dns is None), cfg, lifetime)


def async_resolver(cfg: Config, lifetime: float) -> dns.asyncresolver.Resolver:
    """:func:`resolver` for an event loop."""
    return _configured(dns.asyncresolver.Resolver(configure=cfg.dns is None), cfg, lifetime)


def _answer(cfg: Config, name: str, rdtype: str, lifetime: float | None) -> dns.resolver.Answer | None:
    try:
        return resolver(cfg, lifetime).resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"{rdtype} lookup of {name} failed: {exc.__class__.__name__}") from exc


def txt(cfg: Config, name: str, lifetime: float | None = None) -> list[str]:
    """The TXT records of a name, each one's strings joined (as SPF, DKIM and DMARC read them)."""
    answer = _answer(cfg, name, "TXT", lifetime)
    if answer is None:
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]  # type: ignore[attr-defined]


def mx(cfg: Config, name: str, lifetime: float | None = None) -> list[tuple[int, str]]:
    """The MX records of a name as ``(preference, host)``, hosts lowercased without the trailing dot."""
    answer = _answer(cfg, name, "MX", lifetime)
    if answer is None:
        return []
    return sorted((int(r.preference), r.exchange.to_text().rstrip(".").lower())  # type: ignore[attr-defined]
                  for r in answer)
