"""The egress policy: where Mailward may connect on a tenant's behalf.

Whatever a tenant can point Mailward at — its domains' transport (delivery and call-ahead), its LDAP directory, its
logo — is a host the tenant chose. Unchecked, a tenant could aim the ingress, the worker or the web at Mailward's own
Redis (an LDAP bind DN whose BER length bytes end a line is a Redis command), at the cloud metadata service, or at
anything on the MSP's networks, and read open and closed ports off the error messages.

The policy:

- **addresses**: a host is resolved with the configured resolver (``MAILWARD_DNS``) and refused if any of its
  addresses is loopback, private (RFC 1918, ULA), link-local, CGNAT, multicast, unspecified, reserved, or a cloud
  metadata endpoint (:data:`REFUSED_NETWORKS`, :data:`METADATA_ADDRESSES`), unless ``MAILWARD_TENANT_EGRESS_ALLOW``
  covers it (a metadata endpoint only when the MSP names that very address). An IPv4 address inside an IPv6 one
  (mapped, NAT64, 6to4, Teredo) is judged too.
- **ports**: a transport only on SMTP ports (``MAILWARD_TENANT_SMTP_PORTS``), a directory only on LDAP ports
  (``MAILWARD_TENANT_LDAP_PORTS``).
- **twice**: when a setting is saved (:meth:`EgressPolicy.vet`: a clear form or API error) and again when Mailward
  connects (:meth:`EgressPolicy.pin`: resolve, check, and connect to the checked address), so a name that resolves
  elsewhere later (DNS rebinding) gains nothing.
- **no oracle**: nothing is connected to before the check, so a refusal reads the same whether something listens on
  the port or not.

Who is held to it: tenant admins (portal), every API key (a tenant's or the MSP's: keys are what leaks), and the MSP
console. Only the MSP on the command line may set any host (:meth:`EgressPolicy.unchecked`): whoever runs the CLI
already holds the database and Redis credentials. A row set that way is marked ``*_egress_exempt`` and its
connections are not checked either; a tenant who changes it later is held to the policy again.

A logo is loaded by people's browsers, never by Mailward: it gets the address check without the MSP's allowances
(meant for reaching tenants' servers on the MSP's networks) and without a port list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from tenants import dnslookup
from tenants.exceptions import ValidationError
from tenants.platform.config import Config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What a tenant-supplied endpoint is for: decides the ports it may use.
SMTP, LDAP, WEB = "smtp", "ldap", "web"
#: Address records looked up for a host name, in the order its addresses are tried.
RECORD_TYPES = ("A", "AAAA")
#: What one query of a host's addresses gave: its answer or its failure.
Outcome = dns.resolver.Answer | dns.exception.DNSException
#: Seconds one resolution of a tenant-supplied host may take (a form waits on it; delivery has its own timeouts).
RESOLVE_TIMEOUT = 5.0

#: Networks a tenant-supplied endpoint may not reach, with what they are (for logs; refusals do not say which).
REFUSED_NETWORKS: tuple[tuple[str, IPNetwork], ...] = tuple((name, ipaddress.ip_network(net)) for name, net in (
    ("unspecified", "0.0.0.0/8"),  # "this network"; 0.0.0.0 reaches the local host on Linux
    ("private", "10.0.0.0/8"),
    ("CGNAT", "100.64.0.0/10"),  # RFC 6598 shared space; Alibaba Cloud's metadata is 100.100.100.200
    ("loopback", "127.0.0.0/8"),
    ("link-local", "169.254.0.0/16"),  # the metadata service of AWS, GCP, Azure and OpenStack is 169.254.169.254
    ("private", "172.16.0.0/12"),
    ("IETF protocol assignments", "192.0.0.0/24"),  # Oracle Cloud's metadata is 192.0.0.192
    ("private", "192.168.0.0/16"),
    ("benchmarking", "198.18.0.0/15"),
    ("multicast", "224.0.0.0/4"),
    ("reserved", "240.0.0.0/4"),  # broadcast 255.255.255.255 included
    ("unspecified", "::/128"),
    ("loopback", "::1/128"),
    ("discard", "100::/64"),
    ("ULA", "fc00::/7"),  # AWS's IPv6 metadata service is fd00:ec2::254
    ("link-local", "fe80::/10"),
    ("site-local", "fec0::/10"),
    ("multicast", "ff00::/8"),
))
#: Cloud metadata endpoints: refused even inside an allowed network, unless the MSP allows the address itself.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
    "168.63.129.16",  # Azure WireServer (a public address, hence named here)
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Names that are the local host without asking DNS (RFC 6761).
_LOCALHOST = ("localhost", ".localhost")


class EgressError(ValidationError):
    """A tenant-supplied endpoint Mailward will not connect to; the message is for the tenant and names no reason
    that depends on the destination's state."""


class EgressRefused(EgressError):
    """The port, or an address the host resolves to, is outside the policy."""


class EgressUnresolved(EgressError):
    """The host has no address to connect to (at connect time; a save accepts names that do not resolve yet)."""


def describe_ports(ports: Iterable[int]) -> str:
    """``25, 465, 587 or 2525``; runs of consecutive ports as ``low-high``."""
    runs: list[list[int]] = []
    for port in sorted(ports):
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    items = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally (``[v6]`` brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return None


def _lookup(resolver: dns.resolver.Resolver, host: str, rdtype: str) -> Outcome:
    """One query's answer, or its failure (which :func:`_addresses` weighs against the other record type's)."""
    try:
        return resolver.resolve(host, rdtype, search=False)
    except dns.exception.DNSException as exc:
        return exc


async def _lookup_async(resolver: dns.asyncresolver.Resolver, host: str, rdtype: str) -> Outcome:
    """:func:`_lookup` for an event loop."""
    try:
        return await resolver.resolve(host, rdtype, search=False)
    except dns.exception.DNSException as exc:
        return exc


def _addresses(host: str, outcomes: list[Outcome]) -> list[IPAddress]:
    """The addresses of the answers; a name that does not exist (or has no address) is []. Only when no lookup gave
    an answer at all (timeouts, SERVFAIL) is it :class:`EgressUnresolved`."""
    found: list[IPAddress] = []
    failed = 0
    for outcome in outcomes:
        if isinstance(outcome, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
            continue
        if isinstance(outcome, dns.exception.DNSException):
            failed += 1
            continue
        found.extend(ipaddress.ip_address(rr.address) for rr in outcome)  # type: ignore[attr-defined]
    if not found and failed == len(outcomes):
        raise EgressUnresolved(f"{host} could not be resolved (DNS did not answer)")
    return found


def _views(ip: IPAddress) -> Iterator[IPAddress]:
    """The address and every IPv4 address embedded in it (IPv4-mapped, NAT64, 6to4, Teredo)."""
    yield ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            yield ip.ipv4_mapped
        if ip in _NAT64:
            yield ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            yield ip.sixtofour
        if ip.teredo is not None:
            yield from ip.teredo


def refused_reason(ip: IPAddress, allow: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``ip`` is refused (``loopback``, ``metadata``...), or None if a tenant's endpoint may be there."""
    allowed = tuple(allow)
    for addr in _views(ip):
        if addr in METADATA_ADDRESSES:
            if not any(net.num_addresses == 1 and addr in net for net in allowed):
                return "metadata"
            continue
        if any(addr.version == net.version and addr in net for net in allowed):
            continue
        for name, net in REFUSED_NETWORKS:
            if addr.version == net.version and addr in net:
                return name
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """The egress policy of one installation; ``enforced`` False is the MSP's command line (any host)."""

    cfg: Config
    enforced: bool = True
    lifetime: float = RESOLVE_TIMEOUT

    @classmethod
    def unchecked(cls, cfg: Config) -> EgressPolicy:
        """What the MSP's command line sets: any host and port, marked exempt so connections skip the checks too."""
        return cls(cfg, enforced=False)

    def ports(self, kind: str) -> frozenset[int] | None:
        """The ports an endpoint of ``kind`` may use (None: any)."""
        return {SMTP: self.cfg.tenant_smtp_ports, LDAP: self.cfg.tenant_ldap_ports}.get(kind)

    def check_port(self, kind: str, port: int, label: str) -> None:
        allowed = self.ports(kind)
        if self.enforced and allowed is not None and port not in allowed:
            raise EgressRefused(f"{label} port {port} is not allowed: use {describe_ports(allowed)}")

    def refused(self, kind: str, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused for an endpoint of ``kind``, or None."""
        return refused_reason(ip, () if kind == WEB else self.cfg.tenant_egress_allow)

    def _judge(self, kind: str, host: str, addresses: list[IPAddress], label: str) -> None:
        if any(self.refused(kind, ip) for ip in addresses):
            if kind == WEB:
                raise EgressRefused(f"{label} {host} is not allowed: it must be on a public address")
            raise EgressRefused(f"{label} {host} is not allowed: Mailward does not connect to loopback, private, "
                                f"link-local or cloud metadata addresses for a tenant (if your server is on such a "
                                f"network, ask your provider to allow it)")

    # --- resolution ---------------------------------------------------------------------------------------------

    @staticmethod
    def _without_dns(host: str) -> list[IPAddress] | None:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        name = host.strip().rstrip(".").lower()
        if name == _LOCALHOST[0] or name.endswith(_LOCALHOST[1]):
            return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        return None

    def resolve(self, host: str) -> list[IPAddress]:
        """The host's addresses (IPv4 first); [] if the name does not exist. :class:`EgressUnresolved` if DNS
        gave no usable answer at all."""
        known = self._without_dns(host)
        if known is not None:
            return known
        resolver = dnslookup.resolver(self.cfg, self.lifetime)
        return _addresses(host, [_lookup(resolver, host, rdtype) for rdtype in RECORD_TYPES])

    async def resolve_async(self, host: str) -> list[IPAddress]:
        """:meth:`resolve` for an event loop."""
        known = self._without_dns(host)
        if known is not None:
            return known
        resolver = dnslookup.async_resolver(self.cfg, self.lifetime)
        return _addresses(host, [await _lookup_async(resolver, host, rdtype) for rdtype in RECORD_TYPES])

    # --- the two checks -----------------------------------------------------------------------------------------

    def vet(self, kind: str, host: str, port: int | None, *, label: str) -> None:
        """Check a setting as it is saved: the port, and every address the host resolves to now. A name that does
        not resolve (yet) is accepted: :meth:`pin` checks again before any connection."""
        if not self.enforced:
            return
        if port is not None:
            self.check_port(kind, port, label)
        try:
            addresses = self.resolve(host)
        except EgressUnresolved:
            return
        self._judge(kind, host, addresses, label)

    def pin(self, kind: str, host: str, port: int, *, label: str) -> list[str]:
        """Check an endpoint just before connecting; the checked addresses to connect to (never the name, which
        could resolve elsewhere a moment later). Unchecked (the MSP's CLI): the host itself."""
        if not self.enforced:
            return [host]
        self.check_port(kind, port, label)
        return self._pinned(kind, host, self.resolve(host), label)

    async def pin_async(self, kind: str, host: str, port: int, *, label: str) -> list[str]:
        """:meth:`pin` for an event loop."""
        if not self.enforced:
            return [host]
        self.check_port(kind, port, label)
        return self._pinned(kind, host, await self.resolve_async(host), label)

    def _pinned(self, kind: str, host: str, addresses: list[IPAddress], label: str) -> list[str]:
        if not addresses:
            raise EgressUnresolved(f"{label} {host} does not resolve to an address")
        self._judge(kind, host, addresses, label)
        return [str(ip) for ip in addresses]
