"""Header, body and URI rules: every shipped rule fires on a mail that has what it describes, and not on a benign
mail that comes close; an ordinary mail fires none."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from smtp.checks.base import CheckContext
from smtp.checks.rules import DEFAULT_RULES, RulesCheck, evaluate, load_rules
from smtp.mime import ParsedMail, parse_mail
from tenants.platform.config import Config
from tenants.symbols import symbol_table

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
BOUNDARY = "=-=-=boundary-test-=-=-="
#: The headers of an ordinary mail; a sample replaces (value) or removes (None) some of them.
BASE_HEADERS = {
    "From": "Alice Example <alice@example.com>",
    "To": "Bob <bob@example.org>",
    "Subject": "Minutes of Tuesday's meeting",
    "Date": format_datetime(NOW - timedelta(minutes=5)),
    "Message-ID": "<20260302.1234@mail.example.com>",
    "MIME-Version": "1.0",
}
BASE_TEXT = ("Hi Bob,\n\nhere are the minutes of Tuesday's meeting: https://www.example.com/minutes/2026-03\n"
             "We agreed to move the release to next month.\n\nAlice\n")


def make(headers: dict[str, str | None] | None = None, text: str | None = BASE_TEXT, html: str | None = None) -> bytes:
    """A raw mail: the base headers with changes, a text part, an HTML part, or both (multipart/alternative)."""
    fields = {**BASE_HEADERS, **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    if text is not None and html is not None:
        body = (f"Content-Type: multipart/alternative; boundary=\"{BOUNDARY}\"\r\n\r\n"
                f"--{BOUNDARY}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
                f"--{BOUNDARY}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--{BOUNDARY}--\r\n")
    elif html is not None:
        body = f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}"
    else:
        body = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text or ''}"
    return (head + body).replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def hits(raw: bytes) -> set[str]:
    return {symbol for symbol, _ in evaluate(DEFAULT_RULES, parse_mail(raw), now=NOW)}


HIDDEN = "Cheap watches and more cheap watches for everyone who reads this hidden paragraph. " * 4
LONG_TEXT = "The quarterly report is attached as an image below; the numbers are in the table. " * 6

#: symbol -> (a mail that has what the rule describes, a benign mail that comes close).
SAMPLES: dict[str, tuple[bytes, bytes]] = {
    "MISSING_FROM": (make({"From": None}), make()),
    "MISSING_DATE": (make({"Date": None}), make()),
    "MISSING_MID": (make({"Message-ID": None}), make()),
    "MISSING_SUBJECT": (make({"Subject": None}), make({"Subject": ""})),
    "DATE_INVALID": (make({"Date": "Fri, 02 Aug 2026 23:37:59 0530"}),
                     make({"Date": "2 Mar 26 09:55 GMT"})),
    "DATE_IN_FUTURE": (make({"Date": format_datetime(NOW + timedelta(days=3))}),
                       make({"Date": format_datetime(NOW + timedelta(hours=2))})),
    "FROM_DISPLAY_OTHER_ADDR": (make({"From": '"ceo@example.com" <ceo.example@mailer.invalid>'}),
                                make({"From": '"alice@example.com" <alice@mail.example.com>'})),
    "FROM_DISPLAY_BRAND": (make({"From": '"PayPal Service" <service@paypal-secure-login.test>'}),
                           make({"From": '"PayPal" <service@intl.paypal.com>'})),
    "FROM_NO_NAME_NUMERIC": (make({"From": "83920174@mailer.example.net"}),
                             make({"From": "Support <83920174@mailer.example.net>"})),
    "REPLYTO_OTHER_DOMAIN": (make({"Reply-To": "alice@elsewhere.test"}),
                             make({"Reply-To": "alice@lists.example.com"})),
    "REPLYTO_FREEMAIL": (make({"Reply-To": "claims.office@gmail.com"}),
                         make({"From": "Al <al.smith@gmail.com>", "Reply-To": "al.smith@gmail.com"})),
    "FREEMAIL_BULK": (make({"From": "Deals <deals4u@hotmail.com>"},
                           text="Great deals every week.\nTo unsubscribe reply with REMOVE.\n"),
                      make({"From": "Deals <deals4u@hotmail.com>"}, text="See you at the match on Sunday!\n")),
    "FAKE_REPLY": (make({"Subject": "Re: your invoice"}),
                   make({"Subject": "Re: your invoice", "In-Reply-To": "<abc@example.org>"})),
    "SUBJ_ALL_CAPS": (make({"Subject": "MAKE MONEY FAST FROM TODAY"}), make({"Subject": "IBM and NASA notes"})),
    "SUBJ_EXCESS_MARKS": (make({"Subject": "You won!!!"}), make({"Subject": "Great news! The build is green"})),
    "URI_SHORTENER": (make(text="Open https://bit.ly/3xYzAbc now\n"),
                      make(text="Open https://www.bitly-alternatives.example/t.co/x\n")),
    "URI_IP_LITERAL": (make(text="Log in at http://192.0.2.7/secure/login\n"),
                       make(text="Version 1.2.3.4 is out: https://www.example.com/1.2.3.4/\n")),
    "URI_OBFUSCATED": (make(text="Log in at http://www.paypal.com@login.example.net/\n"),
                       make(text="Write to alice@example.com or see https://www.example.com/@alice\n")),
    "HTML_LINK_TEXT_MISMATCH": (
        make(html='<p>Sign in: <a href="http://login.example.net/pp">https://www.paypal.com/signin</a></p>'),
        make(html='<p>Sign in: <a href="https://www.paypal.com/signin?x=1">https://www.paypal.com/signin</a></p>')),
    "MIME_HTML_ONLY": (make(text=None, html="<p>Hello Bob</p>"), make(html="<p>Hello Bob</p>")),
    "HTML_HIDDEN_TEXT": (make(html=f'<p>Hello</p><div style="display: none">{HIDDEN}</div>'),
                         make(html=f'<p>Hello</p><div style="color: #333">{HIDDEN}</div>')),
    "HTML_IMAGE_ONLY": (make(text=None, html='<html><body><img src="https://img.example.net/offer.jpg"></body></html>'),
                        make(text=None, html=f'<p>{LONG_TEXT}</p><img src="https://www.example.com/chart.png">')),
    "HTML_PASSWORD_FIELD": (make(html='<form action="https://x.example.net/"><input type="password" name="pw"></form>'),
                            make(html='<form action="https://x.example.net/"><input type="text" name="q"></form>')),
    "PHISH_VERIFY_ACCOUNT": (make(text="Please verify your account within 24 hours.\n"),
                             make(text="Please verify your e-mail address to finish signing up.\n")),
    "PHISH_PASSWORD_EXPIRY": (make(text="Your password expires today. Keep it here.\n"),
                              make(text="The wifi password is on the board in the kitchen.\n")),
    "PHISH_SIGNIN_ALERT": (make(text="We detected unusual sign-in activity on your mailbox.\n"),
                           make(text="The sign-in sheet is at the reception.\n")),
    "PHISH_ACCOUNT_SUSPENDED": (make(text="Your account has been suspended until you confirm.\n"),
                                make(text="Your account was created; welcome aboard.\n")),
    "MONEY_WIRE_URGENT": (make(text="I need you to process a wire transfer today. It is confidential.\n"),
                          make(text="We accept payment by wire transfer.\n")),
    "MONEY_GIFT_CARDS": (make(text="Can you buy 5 Google Play gift cards for a client and send me the codes?\n"),
                         make(text="Thank you for the gift card, it was lovely.\n")),
    "MONEY_BITCOIN_DEMAND": (make(text="Send $1500 to my bitcoin wallet: bc1qexample\n"),
                             make(text="An article on bitcoin prices this week.\n")),
    "ADVANCE_FEE": (make(text="I seek your help to transfer US$15,500,000.00 left by a deceased client.\n"),
                    make(text="The new building has a budget of $2 million.\n")),
    "LOTTERY_SCAM": (make(text="Your e-mail won the international lottery. Contact our claims agent now.\n"),
                     make(text="Who is in for the office lottery pool this Friday?\n")),
    "DEAR_IMPERSONAL": (make(text="Dear Customer,\nyour parcel is waiting.\n"),
                        make(text="Dear Bob,\nyour parcel is waiting.\n")),
    "PHARMA_DRUGS": (make(text="Buy viagra online without prescription\n"),
                     make(text="We travel via Graz and Vienna.\n")),
    "EARN_FROM_HOME": (make(text="Earn $500 per day from your kitchen table!\n"),
                       make(text="I will work from home tomorrow.\n")),
    "GUARANTEED_100": (make(text="Results 100% guaranteed or your money back.\n"),
                       make(text="Test coverage is at 100% now.\n")),
    "URGENCY_ACT_NOW": (make(text="Act now: this is a limited time offer.\n"),
                        make(text="We should act on the review next week.\n")),
    "NOT_SPAM_CLAIM": (make(text="This email is not spam, you signed up on our site.\n"),
                       make(text="The filter flagged my mail as spam.\n")),
    "LOAN_DEBT_OFFER": (make(text="Lower your mortgage payments, no credit check!\n"),
                        make(text="The mortgage meeting with the bank is on Monday.\n")),
    "WEIGHT_LOSS": (make(text="Lose 30 pounds in 30 days with our pill.\n"),
                    make(text="I lost 3 games in a row yesterday.\n")),
    "ADULT_CONTENT": (make(text="Hot live sex cams, free for 24 hours.\n"),
                      make(text="The zoo's live cam shows the penguins.\n")),
    "STOCK_PROMOTION": (make(text="This stock is poised to explode. Strong buy!\n"),
                        make(text="We are out of paper stock, please order more.\n")),
    "BULK_NO_LIST_UNSUB": (make(text="Our weekly news.\nTo unsubscribe click the link below.\n"),
                           make({"List-Unsubscribe": "<https://news.example.com/unsub?u=1>"},
                                text="Our weekly news.\nTo unsubscribe click the link below.\n")),
}


def test_every_rule_has_samples_and_a_score() -> None:
    symbols = {r.symbol for r in DEFAULT_RULES}
    assert symbols == set(SAMPLES)
    table = symbol_table()
    assert symbols <= set(table), f"rules without a score: {sorted(symbols - set(table))}"


def test_an_ordinary_mail_fires_no_rule() -> None:
    assert hits(make()) == set()
    assert hits(make(html="<p>Hi Bob, the minutes: <a href='https://www.example.com/m'>minutes</a></p>")) == set()


@pytest.mark.parametrize("symbol", sorted(SAMPLES))
def test_rule_fires_on_its_sample(symbol: str) -> None:
    assert symbol in hits(SAMPLES[symbol][0])


@pytest.mark.parametrize("symbol", sorted(SAMPLES))
def test_rule_does_not_fire_on_benign_mail(symbol: str) -> None:
    assert symbol not in hits(SAMPLES[symbol][1])


def test_white_text_on_white_is_hidden_but_on_a_dark_background_is_not() -> None:
    hidden = make(html=f'<body><p>Hello</p><font color="#ffffff">{HIDDEN}</font></body>')
    shown = make(html=f'<body bgcolor="#000000"><p>Hello</p><font color="#ffffff">{HIDDEN}</font></body>')
    assert "HTML_HIDDEN_TEXT" in hits(hidden)
    assert "HTML_HIDDEN_TEXT" not in hits(shown)


def test_mailing_lists_may_set_reply_to_and_rewrite_the_display_name() -> None:
    listed = make({"From": '"bob@example.org via Team" <team@groups.example.net>', "Reply-To": "bob@example.org",
                   "List-Id": "<team.groups.example.net>"})
    assert not {"REPLYTO_OTHER_DOMAIN", "FROM_DISPLAY_OTHER_ADDR"} & hits(listed)


def test_click_tracking_through_the_senders_own_domain_is_no_link_mismatch() -> None:
    """Newsletters route links through a click counter at their own domain; a link to a third domain still fires."""
    tracked = make({"From": "Shop News <news@mail.shop.example>"},
                   html='<p><a href="https://click.shop.example/r?id=7">www.partner.example</a></p>')
    assert "HTML_LINK_TEXT_MISMATCH" not in hits(tracked)
    elsewhere = make({"From": "Shop News <news@mail.shop.example>"},
                     html='<p><a href="https://click.tracker.example/r?id=7">www.partner.example</a></p>')
    assert "HTML_LINK_TEXT_MISMATCH" in hits(elsewhere)


def test_link_text_that_is_no_host_name_is_no_link_mismatch() -> None:
    broken = make(html='<p><a href="https://www.all-life-ins.example/">www.all-life</a></p>')
    assert "HTML_LINK_TEXT_MISMATCH" not in hits(broken)


def test_a_brand_in_a_person_name_at_the_brand_domain_is_fine() -> None:
    assert "FROM_DISPLAY_BRAND" not in hits(make({"From": '"Microsoft Outlook" <no-reply@microsoft.com>'}))
    assert "FROM_DISPLAY_BRAND" in hits(make({"From": '"Microsoft 365" <admin@m365-alerts.example>'}))


def test_finding_reason_is_the_description_with_evidence() -> None:
    reasons = dict(evaluate(DEFAULT_RULES, parse_mail(SAMPLES["URI_SHORTENER"][0]), now=NOW))
    assert reasons["URI_SHORTENER"].startswith("A link through a URL shortener")
    assert "bit.ly" in reasons["URI_SHORTENER"]


def test_header_rule_options(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("""
[[rule]]
symbol = "HAS_MAILER"
kind = "header"
header = "X-Mailer"
exists = true
description = "has a mailer"

[[rule]]
symbol = "NOT_OUR_MAILER"
kind = "header"
header = "X-Mailer"
regex = '^OurMail\\b'
negate = true
description = "mailer other than ours"
""")
    rules = load_rules(path)
    ours = parse_mail(make({"X-Mailer": "OurMail 2.1"}))
    none = parse_mail(make())
    assert {s for s, _ in evaluate(rules, ours)} == {"HAS_MAILER"}
    assert {s for s, _ in evaluate(rules, none)} == {"NOT_OUR_MAILER"}


@pytest.mark.parametrize("body, error", [
    ('symbol = "X"\nkind = "body"\nregex = "("', "bad regex"),
    ('symbol = "X"\nkind = "nope"\nregex = "a"', "kind must be"),
    ('symbol = "x"\nkind = "body"\nregex = "a"', "symbol must be"),
    ('symbol = "X"\nkind = "eval"\nfunction = "nope"', "unknown eval function"),
    ('symbol = "X"\nkind = "body"\nregex = "a"\ncolour = "red"', "unknown keys"),
])
def test_a_broken_rule_file_fails_naming_the_rule(tmp_path: Path, body: str, error: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rule]]\n" + body + "\n")
    with pytest.raises(ValueError, match=error):
        load_rules(path)


def test_check_records_symbols_with_reasons() -> None:
    ctx = CheckContext(cfg=Config(), client_ip="192.0.2.1", helo="mx.example.net", mail_from="x@example.net",
                       mail=parse_mail(SAMPLES["PHISH_PASSWORD_EXPIRY"][0]))
    asyncio.run(RulesCheck(Config()).run(ctx))
    assert ctx.has("PHISH_PASSWORD_EXPIRY")
    assert all(f.tenant_id is None and f.reason for f in ctx.findings)
    assert set(RulesCheck.symbols) == set(SAMPLES)


def test_check_without_a_mail_records_nothing() -> None:
    ctx = CheckContext(cfg=Config(), client_ip="192.0.2.1", helo="mx.example.net", mail_from="")
    asyncio.run(RulesCheck(Config()).run(ctx))
    assert ctx.findings == []


def test_an_unparseable_mail_is_still_evaluated() -> None:
    mail = ParsedMail(b"garbage", None, defects=["unparseable"])
    assert {"MISSING_FROM", "MISSING_DATE"} <= {s for s, _ in evaluate(DEFAULT_RULES, mail, now=NOW)}
