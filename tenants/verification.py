"""Domain ownership proof: a TXT record only the domain's owner can publish.

Each domain's token is an HMAC-SHA256 of the installation's secret key and the domain's id (no stored state), so it
never changes while the secret key stays. The record goes at ``_mailward.<domain>`` rather than the apex: the apex's
TXT records stay uncluttered (SPF lives there), and an MSP may delegate the name with a CNAME.

A domain a tenant added itself receives mail only once verified (or vouched for by the MSP, who added it): see
:func:`tenants.policy.find_domain_route`. "Verify" (and the scheduled :func:`recheck_pending`) sets
``Domain.verified`` when the record is there. The proof is kept: a record removed later is reported, but does not
stop the mail of a domain that proved itself once (a zone clean-up must not bounce a customer's mail).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.dnslookup import LookupFailed, txt
from tenants.models import Domain, utcnow
from tenants.platform.config import Config
from tenants.scope import msp_scope

#: The label in front of the domain where the verification TXT record is published.
RECORD_LABEL = "_mailward"
#: Text before the token in the record's value.
VALUE_PREFIX = "mailward-verification="
#: HMAC message prefix: binds the derived token to this one purpose of the secret key.
HMAC_CONTEXT = b"mailward domain verification v1:"
#: Hex characters of the token (128 bits).
TOKEN_LENGTH = 32
#: Days a pending domain (neither vouched for nor verified) is looked up by the scheduled re-check; after that only
#: "Check now" verifies it (a claim nobody completes must not cost DNS queries forever).
RECHECK_DAYS = 14
#: Most pending domains one scheduled re-check looks up, newest first (the customer who just added one is waiting).
RECHECK_BATCH = 200


def token(cfg: Config, domain_id: int) -> str:
    key = cfg.resolve_secret_key().encode()
    return hmac.new(key, HMAC_CONTEXT + str(domain_id).encode(), hashlib.sha256).hexdigest()[:TOKEN_LENGTH]


def record_name(domain: Domain) -> str:
    return f"{RECORD_LABEL}.{domain.name}"


def record_value(cfg: Config, domain: Domain) -> str:
    return VALUE_PREFIX + token(cfg, domain.id)


def zone_line(cfg: Config, domain: Domain) -> str:
    """The zone-file line to publish."""
    return f'{record_name(domain)}. IN TXT "{record_value(cfg, domain)}"'


@dataclass(frozen=True)
class VerificationResult:
    #: True: the record is there; False: DNS answered without it; None: DNS could not be asked.
    verified: bool | None
    message: str
    #: A mailward-verification record is there, with another token (a copy-paste slip, or another domain's).
    other_token: bool = False


def lookup(cfg: Config, domain: Domain) -> VerificationResult:
    """Look the record up; changes nothing."""
    expected = record_value(cfg, domain)
    try:
        values = [v.strip() for v in txt(cfg, record_name(domain))]
    except LookupFailed as exc:
        return VerificationResult(None, f"could not check: {exc}")
    if expected in values:
        return VerificationResult(True, f"{domain.name} is verified: {record_name(domain)} has the token")
    if any(v.startswith(VALUE_PREFIX) for v in values):
        return VerificationResult(False, f"{record_name(domain)} has a mailward-verification record with another "
                                         "token; publish the one shown", other_token=True)
    return VerificationResult(False, f"no verification record at {record_name(domain)} yet")


def check(cfg: Config, domain: Domain) -> VerificationResult:
    """Look the record up and mark ``domain`` verified when it is there (the caller commits). A verified domain
    stays verified when its record is gone: the answer then says so, and that mail keeps flowing."""
    result = lookup(cfg, domain)
    if result.verified:
        domain.verified = True
    elif domain.verified and result.verified is False:
        return VerificationResult(False, f"{result.message}; {domain.name} stays verified (it was proved before), "
                                         "but publish the record again", other_token=result.other_token)
    return result


def state(domain: Domain) -> str:
    """``verified`` (its owner proved it), ``vouched`` (the MSP added it, unproven) or ``pending`` (no mail yet)."""
    return "verified" if domain.verified else "vouched" if domain.vouched else "pending"


def recheck_pending(session: Session, cfg: Config) -> list[str]:
    """Look up the records of recently added pending domains, of every tenant, and mark those now published as
    verified; the names verified (the caller commits, then bumps the policy version when there are any)."""
    since = utcnow() - timedelta(days=RECHECK_DAYS)
    with msp_scope():
        pending = list(session.scalars(
            select(Domain).where(Domain.vouched.is_(False), Domain.verified.is_(False), Domain.created_at >= since)
            .order_by(Domain.id.desc()).limit(RECHECK_BATCH)))
        return [d.name for d in pending if check(cfg, d).verified]
