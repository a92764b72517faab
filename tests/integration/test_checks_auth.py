"""DKIM, ARC and DMARC checks, the Authentication-Results header and its anti-spoofing, against loopback DNS."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smtp.checks.arc import ArcCheck
from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.dkim import DkimCheck
from smtp.checks.dmarc import DmarcCheck, parse_dmarc
from smtp.checks.msgauth import aligned, org_domain, strip_spoofed_authres
from smtp.checks.spf import SpfCheck
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from tenants.platform.config import Config, HostPort
from tests.support.dnsserver import LoopbackDNS

#: The loopback DNS fixtures (the session's server, and that server emptied for each test).

HOSTNAME = "mx.mailward.test"
CLIENT = "81.2.69.160"
OTHER_IP = "81.2.69.200"
#: RSA key size of the test keys: the smallest that dkimpy accepts by default is 1024; 2048 is what senders use.
KEY_BITS = 2048
RSA_EXPONENT = 65537
#: Short DNS timeout for tests of a server that does not answer.
SHORT_TIMEOUT = 0.5


@dataclass(frozen=True)
class Key:
    private_pem: bytes
    txt: str  # the DKIM key record


def _new_key() -> Key:
    priv = rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=KEY_BITS)
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    der = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key(pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())


@pytest.fixture(scope="module")
def key() -> Key:
    return _new_key()


@pytest.fixture(scope="module")
def other_key() -> Key:
    return _new_key()


def mail(from_addr: str = "Alice <alice@example.test>", body: str = "Hello Bob,\r\nsee you.\r\n",
         extra: str = "") -> bytes:
    return (f"{extra}From: {from_addr}\r\nTo: bob@acme.test\r\nSubject: lunch\r\n"
            f"Message-ID: <1@example.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n{body}").encode()


def dkim_sign(raw: bytes, key: Key, domain: str = "example.test", selector: str = "sel") -> bytes:
    header = dkim.sign(raw, selector.encode(), domain.encode(), key.private_pem,
                       include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return header + raw


def publish(dns: LoopbackDNS, key: Key, domain: str = "example.test", selector: str = "sel") -> None:
    dns.set(f"{selector}._domainkey.{domain}", "TXT", key.txt)


def make_cfg(server: LoopbackDNS) -> Config:
    return Config(dns=HostPort("127.0.0.1", server.port), hostname=HOSTNAME)


def make_ctx(cfg: Config, raw: bytes, *, mail_from: str = "alice@example.test", ip: str = CLIENT,
             helo: str = "mail.example.test") -> CheckContext:
    return CheckContext(cfg=cfg, client_ip=ip, helo=helo, mail_from=mail_from, rcpts=["bob@acme.test"],
                        mail=parse_mail(raw))


def symbols(ctx: CheckContext) -> set[str]:
    return {f.symbol for f in ctx.findings}


def reason_of(ctx: CheckContext, symbol: str) -> str:
    return next(f.reason for f in ctx.findings if f.symbol == symbol)


def run_one(check: Check, ctx: CheckContext) -> CheckContext:
    asyncio.run(check.run(ctx))
    return ctx


def run_all(cfg: Config, ctx: CheckContext, *, dns_timeout: float | None = None,
            dmarc_sample: random.Random | None = None) -> CheckContext:
    """SPF at MAIL, then DKIM, ARC and DMARC at DATA, through the real pipeline (dependency order)."""
    kw = {} if dns_timeout is None else {"dns_timeout": dns_timeout}
    checks: Sequence[Check] = [DmarcCheck(cfg, sample=dmarc_sample, **kw), SpfCheck(cfg, **kw), DkimCheck(cfg, **kw),
                               ArcCheck(cfg, **kw)]

    async def both() -> None:
        await run_stage(checks, ctx, Stage.MAIL)
        await run_stage(checks, ctx, Stage.DATA)

    asyncio.run(both())
    return ctx


@pytest.fixture
def example(dns: LoopbackDNS, key: Key) -> Iterator[LoopbackDNS]:
    """example.test: SPF allows CLIENT, DKIM key ``sel`` published, DMARC p=reject."""
    dns.set("example.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    dns.set("mail.example.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    publish(dns, key)
    dns.set("_dmarc.example.test", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@example.test")
    yield dns


# --- organisational domains and alignment -------------------------------------------------------------------------

def test_org_domain_uses_the_public_suffix_list() -> None:
    assert org_domain("a.b.example.com") == "example.com"
    assert org_domain("mail.example.co.uk") == "example.co.uk"
    assert org_domain("co.uk") == "co.uk"
    assert org_domain("mail.acme.test") == "acme.test"  # unknown suffix: the default "*" rule
    assert org_domain("EXAMPLE.COM.") == "example.com"


def test_alignment_modes() -> None:
    assert aligned("mail.example.test", "example.test", "r")
    assert not aligned("mail.example.test", "example.test", "s")
    assert aligned("Example.Test", "example.test", "s")
    assert not aligned("example.co.uk", "other.co.uk", "r")


def test_parse_dmarc_record() -> None:
    assert parse_dmarc("v=DMARC1; p=Reject; sp=none; adkim=s; pct=50") == \
        {"p": "reject", "sp": "none", "adkim": "s", "pct": "50"}
    assert parse_dmarc("v=spf1 -all") is None
    assert parse_dmarc("p=reject; v=DMARC1") is None  # v= must come first


# --- DKIM ---------------------------------------------------------------------------------------------------------

def test_dkim_valid_signature(example: LoopbackDNS, key: Key) -> None:
    ctx = run_one(DkimCheck(make_cfg(example)), make_ctx(make_cfg(example), dkim_sign(mail(), key)))
    assert symbols(ctx) == {"DKIM_VALID"}
    [result] = ctx.facts["dkim"]
    assert (result.result, result.domain, result.selector) == ("pass", "example.test", "sel")
    assert example.query_count("sel._domainkey.example.test", "TXT") == 1


def test_dkim_tampered_body_is_invalid(example: LoopbackDNS, key: Key) -> None:
    signed = dkim_sign(mail(), key)
    tampered = signed.replace(b"see you.", b"send me your password.")
    ctx = run_one(DkimCheck(make_cfg(example)), make_ctx(make_cfg(example), tampered))
    assert symbols(ctx) == {"DKIM_INVALID"}
    assert ctx.facts["dkim"][0].result == "fail"
    assert "body hash" in reason_of(ctx, "DKIM_INVALID")


def test_dkim_tampered_header_is_invalid(example: LoopbackDNS, key: Key) -> None:
    tampered = dkim_sign(mail(), key).replace(b"Subject: lunch", b"Subject: urgent wire transfer")
    ctx = run_one(DkimCheck(make_cfg(example)), make_ctx(make_cfg(example), tampered))
    assert symbols(ctx) == {"DKIM_INVALID"}


def test_dkim_wrong_key_and_missing_key(dns: LoopbackDNS, key: Key, other_key: Key) -> None:
    publish(dns, other_key)
    ctx = run_one(DkimCheck(make_cfg(dns)), make_ctx(make_cfg(dns), dkim_sign(mail(), key)))
    assert symbols(ctx) == {"DKIM_INVALID"}
    dns.clear()
    ctx = run_one(DkimCheck(make_cfg(dns)), make_ctx(make_cfg(dns), dkim_sign(mail(), key)))
    assert symbols(ctx) == {"DKIM_INVALID"}
    assert ctx.facts["dkim"][0].result == "permerror"
    assert "no key" in reason_of(ctx, "DKIM_INVALID")


def test_dkim_none_without_signature(dns: LoopbackDNS) -> None:
    ctx = run_one(DkimCheck(make_cfg(dns)), make_ctx(make_cfg(dns), mail()))
    assert symbols(ctx) == {"DKIM_NONE"}
    assert ctx.facts["dkim"] == [] and dns.query_count() == 0


def test_dkim_every_signature_is_verified(example: LoopbackDNS, key: Key, other_key: Key) -> None:
    publish(example, other_key, domain="esp.test", selector="s2")
    raw = dkim_sign(dkim_sign(mail(), other_key, domain="esp.test", selector="s2"), key)
    ctx = run_one(DkimCheck(make_cfg(example)), make_ctx(make_cfg(example), raw))
    assert symbols(ctx) == {"DKIM_VALID"}
    assert sorted(r.domain for r in ctx.facts["dkim"] if r.result == "pass") == ["esp.test", "example.test"]
    publish(example, key, domain="esp.test", selector="s2")  # esp.test's key now does not match its signature
    ctx = run_one(DkimCheck(make_cfg(example)), make_ctx(make_cfg(example), raw))
    assert symbols(ctx) == {"DKIM_VALID", "DKIM_INVALID"}


def test_dkim_key_lookup_timeout_is_tempfail(dns: LoopbackDNS, key: Key) -> None:
    dns.drop("sel._domainkey.example.test")
    ctx = run_one(DkimCheck(make_cfg(dns), dns_timeout=SHORT_TIMEOUT), make_ctx(make_cfg(dns), dkim_sign(mail(), key)))
    assert symbols(ctx) == {"DKIM_TEMPFAIL"}
    assert ctx.facts["dkim"][0].result == "temperror"


# --- DMARC --------------------------------------------------------------------------------------------------------

def test_dmarc_pass_via_aligned_spf(example: LoopbackDNS) -> None:
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail()))
    assert {"SPF_PASS", "DKIM_NONE", "DMARC_PASS", "ARC_NONE"} <= symbols(ctx)
    assert ctx.facts["dmarc"].result == "pass"
    assert "SPF aligned" in reason_of(ctx, "DMARC_PASS")


def test_dmarc_pass_via_aligned_dkim_despite_spf_fail(example: LoopbackDNS, key: Key) -> None:
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), dkim_sign(mail(), key), ip=OTHER_IP))
    assert {"SPF_FAIL", "DKIM_VALID", "DMARC_PASS"} <= symbols(ctx)
    assert "DKIM aligned" in reason_of(ctx, "DMARC_PASS")


def test_dmarc_fail_reject(example: LoopbackDNS) -> None:
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), ip=OTHER_IP))
    assert {"SPF_FAIL", "DKIM_NONE", "DMARC_FAIL_REJECT"} <= symbols(ctx)
    assert ctx.facts["dmarc"].disposition == "reject"


def test_dmarc_spoofed_from_with_foreign_valid_dkim_fails(example: LoopbackDNS, other_key: Key) -> None:
    """An attacker signs with their own domain and passes their own SPF: the From domain is not aligned."""
    example.set("attacker.test", "TXT", f"v=spf1 ip4:{OTHER_IP} -all")
    publish(example, other_key, domain="attacker.test")
    raw = dkim_sign(mail(), other_key, domain="attacker.test")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), raw, mail_from="x@attacker.test", ip=OTHER_IP))
    assert {"SPF_PASS", "DKIM_VALID", "DMARC_FAIL_REJECT"} <= symbols(ctx)


@pytest.mark.parametrize(("record", "symbol"), [
    ("v=DMARC1; p=quarantine", "DMARC_FAIL_QUARANTINE"),
    ("v=DMARC1; p=none", "DMARC_FAIL_NONE"),
    ("v=DMARC1; p=bogus", "DMARC_FAIL_NONE"),
    ("v=DMARC1; p=reject; pct=0", "DMARC_FAIL_QUARANTINE"),  # not sampled: the next weaker policy
    ("v=DMARC1; p=quarantine; pct=0", "DMARC_FAIL_NONE"),
    ("v=DMARC1; p=reject; pct=100", "DMARC_FAIL_REJECT"),
])
def test_dmarc_policies(example: LoopbackDNS, record: str, symbol: str) -> None:
    example.set("_dmarc.example.test", "TXT", record)
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), ip=OTHER_IP))
    assert symbol in symbols(ctx)


def test_dmarc_pct_samples(example: LoopbackDNS) -> None:
    example.set("_dmarc.example.test", "TXT", "v=DMARC1; p=reject; pct=50")
    seen = set()
    sample = random.Random(7)
    for _ in range(20):
        ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), ip=OTHER_IP), dmarc_sample=sample)
        seen |= symbols(ctx) & {"DMARC_FAIL_REJECT", "DMARC_FAIL_QUARANTINE"}
    assert seen == {"DMARC_FAIL_REJECT", "DMARC_FAIL_QUARANTINE"}


def test_dmarc_relaxed_and_strict_spf_alignment(example: LoopbackDNS) -> None:
    example.set("bounce.example.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), mail_from="b@bounce.example.test"))
    assert {"SPF_PASS", "DMARC_PASS"} <= symbols(ctx)  # relaxed by default
    example.set("_dmarc.example.test", "TXT", "v=DMARC1; p=reject; aspf=s")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), mail_from="b@bounce.example.test"))
    assert {"SPF_PASS", "DMARC_FAIL_REJECT"} <= symbols(ctx)


def test_dmarc_relaxed_and_strict_dkim_alignment(example: LoopbackDNS, key: Key) -> None:
    publish(example, key, domain="news.example.test")
    raw = dkim_sign(mail(), key, domain="news.example.test")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), raw, ip=OTHER_IP))
    assert {"DKIM_VALID", "DMARC_PASS"} <= symbols(ctx)
    example.set("_dmarc.example.test", "TXT", "v=DMARC1; p=quarantine; adkim=s")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), raw, ip=OTHER_IP))
    assert {"DKIM_VALID", "DMARC_FAIL_QUARANTINE"} <= symbols(ctx)


def test_dmarc_subdomain_policy(example: LoopbackDNS) -> None:
    example.set("_dmarc.example.test", "TXT", "v=DMARC1; p=none; sp=reject")
    raw = mail(from_addr="alerts@billing.example.test")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), raw, mail_from="x@elsewhere.test", ip=OTHER_IP))
    assert "DMARC_FAIL_REJECT" in symbols(ctx)  # sp= of the organisational domain's record
    assert ctx.facts["dmarc"].from_domain == "billing.example.test"
    assert example.query_count("_dmarc.billing.example.test", "TXT") == 1
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), mail_from="x@elsewhere.test", ip=OTHER_IP))
    assert "DMARC_FAIL_NONE" in symbols(ctx)  # the domain itself: p=
    example.set("_dmarc.billing.example.test", "TXT", "v=DMARC1; p=quarantine")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), raw, mail_from="x@elsewhere.test", ip=OTHER_IP))
    assert "DMARC_FAIL_QUARANTINE" in symbols(ctx)  # a record of its own wins


def test_dmarc_none_without_record(dns: LoopbackDNS) -> None:
    ctx = run_all(make_cfg(dns), make_ctx(make_cfg(dns), mail()))
    assert {"SPF_NONE", "DMARC_NONE"} <= symbols(ctx)


def test_dmarc_two_from_domains_judged_by_the_worst(example: LoopbackDNS, key: Key) -> None:
    """A second From header naming a protected domain must not hide behind a passing first one."""
    example.set("attacker.test", "TXT", f"v=spf1 ip4:{OTHER_IP} -all")
    example.set("_dmarc.attacker.test", "TXT", "v=DMARC1; p=none")
    raw = mail(from_addr="x@attacker.test", extra="From: CEO <ceo@example.test>\r\n")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), raw, mail_from="x@attacker.test", ip=OTHER_IP))
    assert "DMARC_FAIL_REJECT" in symbols(ctx)
    assert ctx.facts["dmarc"].from_domain == "example.test"


def test_dmarc_dns_timeout_is_tempfail(example: LoopbackDNS) -> None:
    example.drop("_dmarc.example.test")
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), ip=OTHER_IP), dns_timeout=SHORT_TIMEOUT)
    assert "DMARC_TEMPFAIL" in symbols(ctx)
    assert not symbols(ctx) & {"DMARC_FAIL_REJECT", "DMARC_PASS"}


# --- ARC ----------------------------------------------------------------------------------------------------------

def arc_seal(raw: bytes, key: Key, domain: str = "forwarder.test", selector: str = "arc",
             srv_id: str = "mx.forwarder.test") -> bytes:
    """What a forwarding list does: record its own Authentication-Results, then seal an ARC set over the mail."""
    arc = "; arc=pass" if b"ARC-Seal:" in raw else ""  # a later hop states the chain it received (cv=)
    with_ar = f"Authentication-Results: {srv_id}; dkim=pass header.d=example.test; spf=pass{arc}\r\n".encode() + raw
    headers = dkim.arc_sign(with_ar, selector.encode(), domain.encode(), key.private_pem, srv_id.encode())
    return b"".join(headers) + with_ar


def test_arc_chain_pass(dns: LoopbackDNS, other_key: Key) -> None:
    publish(dns, other_key, domain="forwarder.test", selector="arc")
    raw = arc_seal(mail(), other_key)
    ctx = run_one(ArcCheck(make_cfg(dns)), make_ctx(make_cfg(dns), raw))
    assert symbols(ctx) == {"ARC_PASS"}
    assert ctx.facts["arc"].sealer == "forwarder.test"


def test_arc_two_hops_pass(dns: LoopbackDNS, key: Key, other_key: Key) -> None:
    publish(dns, other_key, domain="forwarder.test", selector="arc")
    publish(dns, key, domain="relay2.test", selector="arc")
    raw = arc_seal(arc_seal(mail(), other_key), key, domain="relay2.test", srv_id="mx.relay2.test")
    ctx = run_one(ArcCheck(make_cfg(dns)), make_ctx(make_cfg(dns), raw))
    assert symbols(ctx) == {"ARC_PASS"}
    assert ctx.facts["arc"].instances == 2 and ctx.facts["arc"].sealer == "relay2.test"


def test_arc_tampered_is_fail(dns: LoopbackDNS, other_key: Key) -> None:
    publish(dns, other_key, domain="forwarder.test", selector="arc")
    raw = arc_seal(mail(), other_key).replace(b"see you.", b"wire the money.")
    ctx = run_one(ArcCheck(make_cfg(dns)), make_ctx(make_cfg(dns), raw))
    assert symbols(ctx) == {"ARC_FAIL"}


def test_arc_unpublished_key_is_fail_and_timeout_is_tempfail(dns: LoopbackDNS, other_key: Key) -> None:
    raw = arc_seal(mail(), other_key)
    ctx = run_one(ArcCheck(make_cfg(dns)), make_ctx(make_cfg(dns), raw))
    assert symbols(ctx) == {"ARC_FAIL"}
    dns.drop("arc._domainkey.forwarder.test")
    ctx = run_one(ArcCheck(make_cfg(dns), dns_timeout=SHORT_TIMEOUT), make_ctx(make_cfg(dns), raw))
    assert symbols(ctx) == {"ARC_TEMPFAIL"}


def test_arc_none(dns: LoopbackDNS) -> None:
    ctx = run_one(ArcCheck(make_cfg(dns)), make_ctx(make_cfg(dns), mail()))
    assert symbols(ctx) == {"ARC_NONE"}


# --- Authentication-Results ---------------------------------------------------------------------------------------

def _parsed(header: str) -> Any:
    return authres.all_features().parse(header)


def test_authentication_results_header(example: LoopbackDNS, key: Key) -> None:
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), dkim_sign(mail(), key)))
    [header] = ctx.add_headers
    assert header.startswith(f"Authentication-Results: {HOSTNAME}; spf=pass smtp.mailfrom=alice@example.test; "
                             "dkim=pass header.d=example.test header.s=sel header.b=")
    assert "\r" not in header and "\n" not in header
    parsed = _parsed(header)  # RFC 8601 syntax, as another implementation reads it
    assert parsed.authserv_id == HOSTNAME
    assert {r.method: r.result for r in parsed.results} == {"spf": "pass", "dkim": "pass", "dmarc": "pass",
                                                            "arc": "none"}
    dmarc = next(r for r in parsed.results if r.method == "dmarc")
    assert dmarc.header_from == "example.test"


def test_authentication_results_for_failures_and_null_sender(dns: LoopbackDNS, key: Key) -> None:
    raw = dkim_sign(mail(), key)
    ctx = run_all(make_cfg(dns), make_ctx(make_cfg(dns), raw, mail_from="", helo="mail.example.test"))
    [header] = ctx.add_headers
    parsed = _parsed(header)
    results = {r.method: r.result for r in parsed.results}
    assert results == {"spf": "none", "dkim": "permerror", "dmarc": "none", "arc": "none"}
    assert "smtp.helo=mail.example.test" in header


def test_sender_cannot_inject_results_into_our_header(example: LoopbackDNS) -> None:
    """A MAIL FROM crafted to look like more results ends up quoted inside one property value."""
    evil = 'x;dkim=pass"(@example.test'
    ctx = run_all(make_cfg(example), make_ctx(make_cfg(example), mail(), mail_from=evil, ip=OTHER_IP))
    [header] = ctx.add_headers
    parsed = _parsed(header)
    assert [r.method for r in parsed.results].count("dkim") == 1
    assert {r.method: r.result for r in parsed.results}["dkim"] == "none"


# --- anti-spoofing ------------------------------------------------------------------------------------------------

SPOOFED = (
    b"Received: from x by y\r\n"
    b"Authentication-Results: mx.mailward.test; dkim=pass header.d=bank.test\r\n"
    b"Authentication-Results: (forged) MX.Mailward.Test.;\r\n spf=pass smtp.mailfrom=bank.test\r\n"
    b"authentication-results: mx.mailward.test 1; dmarc=pass\r\n"
    b"Authentication-Results: mx.upstream.test; spf=fail smtp.mailfrom=bank.test\r\n"
    b"Authentication-Results: mx.mailward.test.evil.test; dkim=pass\r\n"
    b"From: a@bank.test\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.mailward.test; this line is body text\r\n"
)


def test_strip_spoofed_authres_removes_only_our_hostname() -> None:
    out = strip_spoofed_authres(SPOOFED, "mx.mailward.test")
    assert out == (
        b"Received: from x by y\r\n"
        b"Authentication-Results: mx.upstream.test; spf=fail smtp.mailfrom=bank.test\r\n"
        b"Authentication-Results: mx.mailward.test.evil.test; dkim=pass\r\n"
        b"From: a@bank.test\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.mailward.test; this line is body text\r\n"
    )


def test_strip_spoofed_authres_keeps_other_mail_byte_identical() -> None:
    lf = SPOOFED.replace(b"\r\n", b"\n")
    assert strip_spoofed_authres(lf, "MX.MAILWARD.TEST").count(b"mx.mailward.test;") == 1  # only the body line
    clean = b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n"
    assert strip_spoofed_authres(clean, "mx.mailward.test") is clean
    assert strip_spoofed_authres(b"Authentication-Results: mx.mailward.test; spf=pass", "mx.mailward.test") == b""


def test_stripped_mail_still_verifies_dkim(example: LoopbackDNS, key: Key) -> None:
    """Stripping happens before storing; it must not break the sender's signature (A-R is never signed)."""
    raw = dkim_sign(mail(extra=f"Authentication-Results: {HOSTNAME}; dkim=pass\r\n"), key)
    stripped = strip_spoofed_authres(raw, HOSTNAME)
    assert b"Authentication-Results" not in stripped
    ctx = run_one(DkimCheck(make_cfg(example)), make_ctx(make_cfg(example), stripped))
    assert symbols(ctx) == {"DKIM_VALID"}


def test_every_symbol_has_a_shipped_score() -> None:
    from tenants.symbols import symbol_table

    table = symbol_table()
    for check in (DkimCheck, ArcCheck, DmarcCheck):
        for symbol in (*check.symbols, f"{check.name.upper()}_TEMPFAIL"):
            assert symbol in table, symbol
    assert table["DMARC_FAIL_REJECT"].score > table["DMARC_FAIL_QUARANTINE"].score > 0
