"""Web addresses: host and registrable domain (Public Suffix List, shipped with ``publicsuffixlist``: no network),
IP-literal hosts, URL shorteners and the words of a credential page in a link."""

from __future__ import annotations

import ipaddress
import re
from functools import cache
from urllib.parse import unquote, urlsplit

from publicsuffixlist import PublicSuffixList

#: Hosts of URL shorteners: the reader cannot see where such a link (or a QR code that holds one) leads.
SHORTENERS = frozenset({
    "bit.ly", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly", "rebrand.ly", "cutt.ly", "shorturl.at",
    "tiny.cc", "rb.gy", "t.ly", "s.id", "v.gd", "qrco.de", "bit.do", "shorturl.asia", "lnkd.in", "tiny.one",
})
#: Words that mark a page asking for credentials, matched as whole tokens of the host and path (lower case).
CREDENTIAL_WORDS = frozenset({
    "login", "log-in", "logon", "signin", "sign-in", "webscr", "password", "passwd", "verify", "verification",
    "authenticate", "auth", "sso", "mfa", "2fa", "unlock", "reactivate", "validate", "owa", "webmail",
})
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


@cache
def _psl() -> PublicSuffixList:
    """The Public Suffix List shipped in the package (loaded once, ~10 ms)."""
    return PublicSuffixList()


def host_of(url: str) -> str:
    """The lower-case host of a web address (``www.x.example/...`` counts as one), "" when there is none."""
    text = url.strip()
    if not _SCHEME_RE.match(text):
        text = "http://" + text
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:
        return ""
    return host.rstrip(".").lower()


def is_ip_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def registrable_domain(host: str) -> str:
    """The domain a registrant owns (``a.b.example.co.uk`` → ``example.co.uk``); an IP, a bare suffix or a
    single label is returned as it is, so that two such hosts compare equal only when they are the same."""
    host = host.rstrip(".").lower()
    if not host or is_ip_host(host) or "." not in host:
        return host
    return _psl().privatesuffix(host) or host


def public_suffix(host: str) -> str:
    """The public suffix of a host (``example.co.uk`` → ``co.uk``)."""
    return _psl().publicsuffix(host.rstrip(".").lower()) or ""


def domain_label(domain: str) -> str:
    """A registrable domain without its public suffix: ``paypal.co.uk`` → ``paypal`` (what a lookalike imitates)."""
    suffix = public_suffix(domain)
    if suffix and domain.endswith("." + suffix):
        return domain[: -len(suffix) - 1]
    return domain.partition(".")[0]


def within(host: str, domains: frozenset[str] | set[str]) -> bool:
    """True when ``host`` is one of ``domains`` or a subdomain of one."""
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels)))


def tokens(url: str) -> list[str]:
    """Lower-case word tokens of a URL's host and path (percent-escapes decoded), for keyword matching."""
    try:
        parts = urlsplit(url if _SCHEME_RE.match(url) else "http://" + url)
        text = f"{parts.hostname or ''} {unquote(parts.path)} {unquote(parts.query)}"
    except ValueError:
        text = url
    return _TOKEN_RE.findall(text.lower())[:200]


def credential_words(url: str) -> list[str]:
    """The credential-page words in a URL (``/owa/auth/login.php`` → ``owa, auth, login``)."""
    out: list[str] = []
    for tok in tokens(url):
        for word in (tok, *tok.split("-")):
            if word in CREDENTIAL_WORDS and word not in out:
                out.append(word)
    return out


def url_traits(url: str) -> list[str]:
    """What makes a web address suspicious on its own: an IP host, a shortener, credential words."""
    host = host_of(url)
    out: list[str] = []
    if host and is_ip_host(host):
        out.append("IP address host")
    if host in SHORTENERS:
        out.append("URL shortener")
    words = credential_words(url)
    if words:
        out.append("credential words: " + ", ".join(words[:3]))
    return out
