"""Domain ownership proof: a TXT record only the domain's owner can publish.

Each domain's token is an HMAC-SHA256 of the installation's secret key and the domain's id (no stored state), so it
never changes while the secret key stays. The record goes at ``_mailward.<domain>`` rather than the apex: the apex's
TXT records stay uncluttered (SPF lives there), and an MSP may delegate the name with a CNAME. "Check now" sets
``Domain.verified`` from what DNS answers: the record present → verified, absent or wrong → not verified; when DNS
cannot be asked, the flag stays as it was. Verification is informational: unverified domains still receive mail.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from tenants.config import Config
from tenants.dnslookup import LookupFailed, txt
from tenants.models import Domain

#: The label in front of the domain where the verification TXT record is published.
RECORD_LABEL = "_mailward"
#: Text before the token in the record's value.
VALUE_PREFIX = "mailward-verification="
#: HMAC message prefix: binds the derived token to this one purpose of the secret key.
HMAC_CONTEXT = b"mailward domain verification v1:"
#: Hex characters of the token (128 bits).
TOKEN_LENGTH = 32


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
    """Look the record up and set ``domain.verified`` from a definite answer (the caller commits)."""
    result = lookup(cfg, domain)
    if result.verified is not None:
        domain.verified = result.verified
    return result
