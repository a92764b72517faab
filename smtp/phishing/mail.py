"""One mail through every phishing feature: the facts the check records, as (symbol, reason, tenant id).

Pure: the caller passes the parsed mail, the envelope and each recipient tenant's identity (its domains and the
people of its directory), loaded and cached by :mod:`smtp.checks.phishing`. Runs in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses, parseaddr

from smtp.mime import Attachment, ParsedMail
from smtp.phishing.brands import Brand, brand_owning
from smtp.phishing.display import colleague_names, display_brand, display_colleague
from smtp.phishing.html import HtmlFacts, analyse_html, shown_domain
from smtp.phishing.lookalike import Targets, find_lookalike, make_targets, punycode_trick
from smtp.phishing.qr import scan_attachments
from smtp.phishing.urls import credential_words, host_of, registrable_domain, tokens, url_traits, within

#: Hosts of links (body, HTML attachments, QR codes) judged per mail; a mail with more is judged that far.
MAX_HOSTS = 200
#: Reasons kept per symbol; the rest are counted.
MAX_REASONS = 3
#: Declared types and name endings of HTML attachments (an SVG can hold HTML and script too).
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml"})
HTML_EXTENSIONS = (".htm", ".html", ".shtml", ".xhtml", ".svg", ".mht", ".mhtml")
#: Words a phishing page disguises from filters with hidden text; brand aliases are added to them.
SENSITIVE_WORDS = frozenset({"password", "verify", "account", "login", "sign in", "suspended", "mailbox", "invoice",
                             "payment", "expire", "unlock"})
#: The symbol the check records for what it could not analyse (score 0; its reason says what and why).
TEMPFAIL = "PHISHING_TEMPFAIL"
#: A finding: symbol, reason, and the tenant it holds for (None: every tenant).
Found = tuple[str, str, int | None]


@dataclass(frozen=True)
class TenantIdentity:
    """What a tenant is, for impersonation checks: its own domains and the people its directory knows."""

    tenant_id: int
    domains: frozenset[str]
    #: Name key (``john smith``) → address, from the tenant's known recipient addresses.
    colleagues: dict[str, str] = field(default_factory=dict, compare=False)
    targets: Targets = field(default_factory=lambda: Targets(()), compare=False)

    @classmethod
    def build(cls, tenant_id: int, domains: Iterable[str], addresses: Iterable[str]) -> TenantIdentity:
        own = frozenset(d.lower().rstrip(".") for d in domains)
        return cls(tenant_id, own, colleague_names(addresses),
                   Targets(make_targets(own, f"your domain {min(own, default='')}")))


class _Findings:
    """Reasons grouped by (symbol, tenant id), in the order found."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, int | None], list[str]] = {}

    def add(self, symbol: str, reason: str, tenant_id: int | None = None) -> None:
        reasons = self.items.setdefault((symbol, tenant_id), [])
        if reason not in reasons:
            reasons.append(reason)

    def out(self) -> list[Found]:
        result = []
        for (symbol, tenant_id), reasons in self.items.items():
            text = "; ".join(reasons[:MAX_REASONS])
            if len(reasons) > MAX_REASONS:
                text += f"; and {len(reasons) - MAX_REASONS} more"
            result.append((symbol, text, tenant_id))
        return result


def is_html_attachment(att: Attachment) -> bool:
    return att.declared_type.lower() in HTML_TYPES or (att.filename or "").lower().endswith(HTML_EXTENSIONS)


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _is_web(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "www."))


def analyse_mail(mail: ParsedMail, *, mail_from: str, rcpts: Sequence[str], brands: tuple[Brand, ...],
                 brand_targets: Targets, tenants: Sequence[TenantIdentity]) -> list[Found]:
    """Every phishing finding of one mail as (symbol, reason, tenant id or None when it holds for all tenants)."""
    found = _Findings()
    display, from_address = parseaddr(mail.header("From") or "")
    from_address = from_address.lower()
    sender_domain = (from_address or mail_from).rpartition("@")[2].lower()
    _sender(found, mail, display, from_address or mail_from, sender_domain, mail_from, rcpts, brands, brand_targets,
            tenants)
    urls: list[tuple[str, str]] = [("link", u) for u in mail.uris]
    protected = brands, tenants
    if mail.html:
        _body_html(found, analyse_html(mail.html), sender_domain, protected)
    for att in mail.attachments:
        if is_html_attachment(att):
            urls.extend(_html_attachment(found, att))
    scan = scan_attachments(mail.attachments)
    for code in scan.codes:
        if _is_web(code.text):
            traits = url_traits(code.text)
            found.add("PHISH_QR_URL", f"{code.source}: QR code leads to {code.text[:120]}")
            if traits:
                found.add("PHISH_QR_URL_SUSPICIOUS", f"{code.source}: {code.text[:120]} ({'; '.join(traits)})")
            urls.append(("QR code", code.text))
    for problem in scan.problems:
        found.add(TEMPFAIL, f"QR codes: {problem}")
    _urls(found, urls, brands, brand_targets, tenants)
    return found.out()


def _sender(found: _Findings, mail: ParsedMail, display: str, address: str, sender_domain: str, mail_from: str,
            rcpts: Sequence[str], brands: tuple[Brand, ...], brand_targets: Targets,
            tenants: Sequence[TenantIdentity]) -> None:
    """Display name claims, and lookalike or deceptive IDN sender domains (From, envelope sender, Reply-To)."""
    claim = display_brand(display, sender_domain, brands)
    if claim:
        found.add("PHISH_DISPLAY_BRAND", claim)
    for tenant in tenants:
        colleague = display_colleague(display, address, tenant.domains, tenant.colleagues, rcpts)
        if colleague:
            found.add("PHISH_DISPLAY_COLLEAGUE", colleague, tenant.tenant_id)
    reply_to = [a for _, a in getaddresses(mail.header_all("Reply-To"))][:5]
    domains = dict.fromkeys(a.rpartition("@")[2].lower() for a in (address, mail_from, *reply_to) if "@" in a)
    for domain in domains:
        _deceptive_domain(found, domain, "PHISH_PUNYCODE_SENDER", "sender domain", brands, brand_targets, tenants)


def _body_html(found: _Findings, facts: HtmlFacts, sender_domain: str,
               protected: tuple[tuple[Brand, ...], Sequence[TenantIdentity]]) -> None:
    """Forms that post a password elsewhere, links that show a brand's or the tenant's address, salted words."""
    brands, tenants = protected
    for action, has_password in facts.forms:
        if has_password and _is_web(action):
            found.add("PHISH_PASSWORD_FORM", f"a form in the mail asks for a password, posting to {host_of(action)}")
    for href, text in facts.links:
        shown = shown_domain(text)
        real = host_of(href) if _is_web(href) else ""
        if not shown or not real or within(real, {registrable_domain(shown)}):
            continue
        owner = brand_owning(shown, brands)
        if owner is not None and not owner.owns(real):
            found.add("PHISH_LINK_MISMATCH", f"link shows {shown} ({owner.name}) but leads to {real}")
        for tenant in tenants:
            if within(shown, tenant.domains) and not within(real, tenant.domains):
                found.add("PHISH_LINK_MISMATCH", f"link shows {shown} (your domain) but leads to {real}",
                          tenant.tenant_id)
    words = set(SENSITIVE_WORDS) | {a for b in brands for a in b.aliases if len(a) >= 4}
    split = facts.hidden_splits(words)
    if split:
        found.add("PHISH_HIDDEN_TEXT", "hidden text or zero-width characters split " + ", ".join(
            repr(w) for w in split[:5]) + " for filters, not for the reader")


def _html_attachment(found: _Findings, att: Attachment) -> list[tuple[str, str]]:
    """Login forms and redirects in an HTML attachment; returns the web addresses it holds."""
    name = att.filename or att.declared_type
    facts = analyse_html(_decode_text(att.data))
    posts = [a for a, _ in facts.forms if _is_web(a)]
    what = []
    if facts.password_fields:
        what.append("a password field")
    elif facts.script_password:
        what.append("a password field drawn by script")
    if posts:
        what.append("a form posting to " + ", ".join(dict.fromkeys(host_of(a) for a in posts[:3])))
    if what:
        inner = " (inside base64-encoded script)" if facts.decoded_inner else ""
        found.add("PHISH_HTML_ATTACH_FORM", f"{name}: {' and '.join(what)}{inner}")
    if facts.redirects:
        found.add("PHISH_HTML_ATTACH_REDIRECT", f"{name}: sends the browser to {facts.redirects[0][:120]}")
    urls = [href for href, _ in facts.links if _is_web(href)] + posts + facts.redirects
    return [(f"{name} link", u) for u in urls]


def _urls(found: _Findings, urls: list[tuple[str, str]], brands: tuple[Brand, ...], brand_targets: Targets,
          tenants: Sequence[TenantIdentity]) -> None:
    """Deceptive IDN hosts, lookalikes of brands and of the tenant's domains, brand names on credential pages."""
    hosts: dict[str, tuple[str, str]] = {}
    for origin, url in urls:
        host = host_of(url)
        if host and host not in hosts and len(hosts) < MAX_HOSTS:
            hosts[host] = (origin, url)
        if host and brand_owning(host, brands) is None:
            _credential_page(found, origin, url, host, brands)
    for host, (origin, _url) in hosts.items():
        _deceptive_domain(found, host, "PHISH_PUNYCODE_URL", f"{origin} host", brands, brand_targets, tenants)


def _deceptive_domain(found: _Findings, domain: str, punycode_symbol: str, label: str, brands: tuple[Brand, ...],
                      brand_targets: Targets, tenants: Sequence[TenantIdentity]) -> None:
    """A deceptive IDN ``domain`` (as ``punycode_symbol``), a lookalike of a brand it does not belong to, or of a
    tenant's own domain; ``label`` says where it stood (``sender domain``, ``<origin> host``)."""
    trick = punycode_trick(domain)
    if trick:
        found.add(punycode_symbol, f"{label} {trick}")
    if brand_owning(domain, brands) is None:
        look = find_lookalike(domain, brand_targets)
        if look:
            found.add("PHISH_LOOKALIKE_BRAND", f"{label} {look.describe()}")
    for tenant in tenants:
        look = find_lookalike(domain, tenant.targets)
        if look:
            found.add("PHISH_LOOKALIKE_OWN_DOMAIN", f"{label} {look.describe()}", tenant.tenant_id)


def _credential_page(found: _Findings, origin: str, url: str, host: str, brands: tuple[Brand, ...]) -> None:
    words = credential_words(url)
    if not words:
        return
    toks = set(tokens(url))
    for brand in brands:
        named = next((a for a in brand.aliases if " " not in a and a in toks), None)
        if named:
            found.add("PHISH_CREDENTIAL_URL", f"{origin} {url[:120]} names {brand.name} and {', '.join(words[:3])} "
                                              f"on {host}, not {brand.name}'s")
            return
