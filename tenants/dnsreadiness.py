"""DNS readiness of a tenant's domain: the records that make Mailward its gateway, each ok, missing or wrong.

Items: the ownership record (:mod:`tenants.verification`), MX at this installation's hostname, an SPF record that
lets this installation send for the domain, one DKIM record per active key matching the stored public key, and a
DMARC record. Each item carries the exact record to publish. Lookups run concurrently, each under
:data:`tenants.dnslookup.LOOKUP_TIMEOUT`; a failed lookup makes its item ``unknown`` ("could not check").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants import verification
from tenants.dkimkeys import txt_record
from tenants.dnslookup import LookupFailed, mx, txt
from tenants.models import DkimKey, Domain
from tenants.platform.config import Config

OK = "ok"
MISSING = "missing"
WRONG = "wrong"
UNKNOWN = "unknown"  # DNS could not be asked
UNSET = "unset"  # the record to publish is not known: MAILWARD_HOSTNAME is not this gateway's public name
#: Threads for the concurrent lookups of one page.
MAX_PARALLEL_LOOKUPS = 8

_TAG_RE = re.compile(r"\s*([a-zA-Z]+)\s*=\s*([^;]*)")


@dataclass(frozen=True)
class Item:
    name: str
    state: str
    detail: str
    #: The zone-file line(s) to publish.
    record: str


def hostname_usable(hostname: str) -> bool:
    """Whether ``hostname`` can be this gateway's public name in DNS (not ``localhost``, and a dotted name)."""
    name = hostname.rstrip(".").lower()
    return "." in name and name.split(".")[0] != "localhost" and not name.endswith((".localdomain", ".localhost"))


#: What the checklist says for MX and SPF while the gateway's public host name is unknown.
HOSTNAME_UNSET = ("your provider has not configured this gateway's public host name yet, so the record to publish "
                  "is not known; it appears here once it is")


def _tags(value: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2).strip() for part in value.split(";") if (m := _TAG_RE.match(part))}


def _verification(cfg: Config, domain: Domain) -> Item:
    result = verification.lookup(cfg, domain)
    state = {True: OK, False: MISSING, None: UNKNOWN}[result.verified]
    if result.other_token:
        state = WRONG
    return Item("Ownership", state, result.message, verification.zone_line(cfg, domain))


def _mx(cfg: Config, domain: Domain) -> Item:
    ours = cfg.hostname.rstrip(".").lower()
    record = f"{domain.name}. IN MX 10 {ours}."
    hosts = [h for _, h in mx(cfg, domain.name)]
    if not hosts:
        return Item("MX", MISSING, f"{domain.name} has no MX record", record)
    others = [h for h in hosts if h != ours]
    if not others:
        return Item("MX", OK, f"MX points at {ours}", record)
    return Item("MX", WRONG, f"MX also (or only) points at {', '.join(others)}: that mail bypasses filtering",
                record)


def _spf_mentions(value: str, hostname: str) -> bool:
    terms = value.lower().split()[1:]
    return any(t.lstrip("+").split(":", 1)[-1].split("/")[0] == hostname for t in terms if ":" in t) or \
        any(t.lstrip("+") == "mx" for t in terms)


def _spf(cfg: Config, domain: Domain) -> Item:
    ours = cfg.hostname.rstrip(".").lower()
    suggested = f"v=spf1 mx a:{ours} ~all"
    records = [v for v in txt(cfg, domain.name) if v.lower().startswith("v=spf1")]
    if not records:
        return Item("SPF", MISSING, "no SPF record", f'{domain.name}. IN TXT "{suggested}"')
    if len(records) > 1:
        return Item("SPF", WRONG, "more than one SPF record (receivers treat that as an error); keep one",
                    f'{domain.name}. IN TXT "{suggested}"')
    current = records[0]
    if _spf_mentions(current, ours):
        return Item("SPF", OK, f"SPF allows {ours}: {current}", f'{domain.name}. IN TXT "{current}"')
    terms = current.split()
    fixed = " ".join([terms[0], f"a:{ours}", *terms[1:]])
    return Item("SPF", WRONG, f"SPF does not allow {ours} (mail relayed through Mailward): {current}",
                f'{domain.name}. IN TXT "{fixed}"')


def _dkim(cfg: Config, key: DkimKey) -> Item:
    name = f"{key.selector}._domainkey.{key.domain}"
    label = f"DKIM {key.selector}"
    records = [v for v in txt(cfg, name) if "p=" in v]
    if not records:
        return Item(label, MISSING, f"no DKIM record at {name}", txt_record(key))
    published = "".join(_tags(records[0]).get("p", "").split())
    if published == key.public_key and len(records) == 1:
        return Item(label, OK, f"{name} publishes the key", txt_record(key))
    return Item(label, WRONG, f"{name} publishes another key than the one Mailward signs with", txt_record(key))


def _dmarc(cfg: Config, domain: Domain) -> Item:
    name = f"_dmarc.{domain.name}"
    suggested = f'{name}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain.name}"'
    records = [v for v in txt(cfg, name) if v.strip().upper().startswith("V=DMARC1")]
    if not records:
        return Item("DMARC", MISSING, f"no DMARC record at {name}", suggested)
    if len(records) > 1:
        return Item("DMARC", WRONG, "more than one DMARC record: receivers ignore them all", suggested)
    policy = _tags(records[0]).get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Item("DMARC", WRONG, f"DMARC record without a valid p= policy: {records[0]}", suggested)
    return Item("DMARC", OK, f"DMARC policy {policy}: {records[0]}", f'{name}. IN TXT "{records[0]}"')


def _guarded(name: str, record: str, fn: Callable[[], Item]) -> Item:
    try:
        return fn()
    except LookupFailed as exc:
        return Item(name, UNKNOWN, f"could not check: {exc}", record)


def checklist(session: Session, cfg: Config, domain: Domain) -> list[Item]:
    """Every readiness item of a domain, looked up concurrently; never raises for DNS trouble."""
    keys = list(session.scalars(select(DkimKey).where(DkimKey.domain == domain.name, DkimKey.active.is_(True))
                                .order_by(DkimKey.selector)))
    ours = cfg.hostname.rstrip(".").lower()
    jobs: list[tuple[str, str, Callable[[], Item]]] = [
        ("Ownership", verification.zone_line(cfg, domain), lambda: _verification(cfg, domain))]
    if hostname_usable(ours):
        jobs += [("MX", f"{domain.name}. IN MX 10 {ours}.", lambda: _mx(cfg, domain)),
                 ("SPF", f'{domain.name}. IN TXT "v=spf1 mx a:{ours} ~all"', lambda: _spf(cfg, domain))]
    else:  # never propose "MX 10 localhost.": say the record is not known yet
        jobs += [(name, "", lambda n=name: Item(n, UNSET, HOSTNAME_UNSET, ""))  # type: ignore[misc]
                 for name in ("MX", "SPF")]
    for key in keys:
        jobs.append((f"DKIM {key.selector}", txt_record(key), lambda k=key: _dkim(cfg, k)))  # type: ignore[misc]
    jobs.append(("DMARC", f'_dmarc.{domain.name}. IN TXT "v=DMARC1; p=quarantine; '
                          f'rua=mailto:postmaster@{domain.name}"', lambda: _dmarc(cfg, domain)))
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_LOOKUPS, len(jobs))) as pool:
        return list(pool.map(lambda job: _guarded(*job), jobs))
