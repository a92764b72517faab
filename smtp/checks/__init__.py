"""The check pipeline's registry: every check class, in one list. ``smtp.pipeline`` runs them.

To add a check: a module here with a :class:`~smtp.checks.base.Check` subclass, its symbols in
``tenants/scores/<group>.toml``, and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

from smtp.checks.arc import ArcCheck
from smtp.checks.attachments import AttachmentCheck
from smtp.checks.base import Check, CheckContext, Finding, Stage
from smtp.checks.bayes import BayesCheck
from smtp.checks.content import ContentCheck
from smtp.checks.dkim import DkimCheck
from smtp.checks.dmarc import DmarcCheck
from smtp.checks.dnsbl import DnsblCheck, UriblCheck
from smtp.checks.lists import ListsCheck
from smtp.checks.mimecheck import MimeCheck
from smtp.checks.phishing import PhishingCheck
from smtp.checks.rspamd import RspamdCheck
from smtp.checks.rules import RulesCheck
from smtp.checks.sarules import SaRulesCheck
from smtp.checks.spamd import SpamdCheck
from smtp.checks.spf import SpfCheck
from smtp.checks.virus import VirusCheck
from tenants.platform.config import Config

#: Every check, in no particular order (the pipeline orders them by stage and dependencies).
REGISTRY: list[type[Check]] = [
    MimeCheck,
    DnsblCheck,
    UriblCheck,
    SpfCheck,
    DkimCheck,
    ArcCheck,
    DmarcCheck,
    VirusCheck,
    AttachmentCheck,
    RulesCheck,
    SaRulesCheck,
    BayesCheck,
    ContentCheck,
    SpamdCheck,
    RspamdCheck,
    ListsCheck,
    PhishingCheck,
]


def build_checks(cfg: Config) -> list[Check]:
    """One instance of every registered check, configured."""
    return [cls(cfg) for cls in REGISTRY]


__all__ = ["Check", "CheckContext", "Finding", "Stage", "REGISTRY", "build_checks"]
