"""The one DNS resolver configuration every lookup uses (MX routing, DNSBL, SPF, DKIM, DMARC)."""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.resolver

from tenants.platform.config import Config

#: Most seconds one DNS query may take, whatever the caller's timeout.
DNS_LIFETIME = 5.0


def _configure(resolver: dns.resolver.BaseResolver, cfg: Config, lifetime: float) -> None:
    if cfg.dns is not None:
        resolver.nameservers = [cfg.dns.host]
        resolver.port = cfg.dns.port
    resolver.lifetime = lifetime
    resolver.timeout = lifetime


def async_resolver(cfg: Config, lifetime: float = DNS_LIFETIME) -> dns.asyncresolver.Resolver:
    """An asyncio resolver on ``MAILWARD_DNS`` (or the system's resolvers when unset)."""
    resolver = dns.asyncresolver.Resolver(configure=cfg.dns is None)
    _configure(resolver, cfg, lifetime)
    return resolver


def sync_resolver(cfg: Config, lifetime: float = DNS_LIFETIME) -> dns.resolver.Resolver:
    """A blocking resolver on the same servers, for libraries that resolve synchronously (pyspf, dkimpy)."""
    resolver = dns.resolver.Resolver(configure=cfg.dns is None)
    _configure(resolver, cfg, lifetime)
    return resolver


def is_ip(text: str) -> bool:
    """True when ``text`` is an IP address literal (no brackets), not a name to look up."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
