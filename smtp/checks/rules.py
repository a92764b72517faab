"""Header, body and URI rules: data-driven tests (``smtp/checks/data/rules.toml``), one symbol per matching rule.

A rule is a regular expression over one part of the mail (a header, the subject, the text the reader sees, the
HTML markup, each URI, or the raw mail) or a named test written here (``kind = "eval"``) for what a regex cannot
say, like "the display name names PayPal but the address is not at PayPal". Rules are compiled once, at import;
a broken rule file fails the start, not a mail. Scores live in ``tenants/scores/rules.toml``.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr, parsedate_to_datetime
from functools import cached_property
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smtp.checks.base import Check, CheckContext, Stage
from smtp.mime import ParsedMail
from smtp.phishing.html import VOID, close_element
from tenants.mail.bayes import registered_domain

RULES_PATH = Path(__file__).resolve().parent / "data" / "rules.toml"
KINDS = ("header", "subject", "body", "rawbody", "uri", "full", "eval")
#: Characters of body text, HTML markup and raw mail a regex rule searches (bounds the work on huge mails).
MAX_SCAN = 256 * 1024
#: Characters of matched text quoted in a finding's reason.
MAX_EVIDENCE = 60
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


# --- the view of a mail the rules read (derived values computed once, on first use) ----------------------------------

class _HtmlFacts(HTMLParser):
    """What the HTML of a mail does: hidden text, links whose text is another address, images."""

    #: Style declarations that hide an element's content.
    HIDING = re.compile(
        r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0(?:\.0+)?\s*(?:;|$|!)"
        r"|font-size\s*:\s*(?:0+(?:\.\d+)?|0?\.\d+|1)\s*(?:px|pt|em|rem|%)?\s*(?:;|$|!)"
        r"|max-height\s*:\s*0+(?:px)?\s*(?:;|$|!)", re.I)
    WHITE = re.compile(r"^\s*(?:#fff(?:fff)?|white|rgb\(\s*255\s*,\s*255\s*,\s*255\s*\))\s*$", re.I)
    COLOR = re.compile(r"(?:^|;)\s*color\s*:\s*([^;!]+)", re.I)
    BACKGROUND = re.compile(r"background(?:-color)?\s*:\s*([^;!]+)", re.I)
    SKIP = frozenset({"script", "style", "head", "title"})
    URL_TEXT = re.compile(r"^(?:https?://|www\.)[^\s/]+", re.I)

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        #: (tag, hidden, white text, background is light or unknown) of each open element.
        self.stack: list[tuple[str, bool, bool, bool]] = [("", False, False, True)]
        self.hidden_chars = 0
        self.hidden_sample = ""
        self.images = 0
        self.mismatches: list[tuple[str, str]] = []
        self._skip = 0
        self._link: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "img":
            self.images += 1
        if tag in self.SKIP:
            self._skip += 1
        if tag == "a":
            self._link = (a.get("href", ""), [])
        if tag in VOID:
            return
        _, hidden, white, light_bg = self.stack[-1]
        style = a.get("style", "")
        if self.HIDING.search(style) or "hidden" in a or (tag == "font" and a.get("size", "").strip() == "0"):
            hidden = True
        bg = a.get("bgcolor", "")
        bg_match = self.BACKGROUND.search(style)
        if bg_match:
            bg = bg_match.group(1)
        if bg:
            light_bg = bool(self.WHITE.match(bg))
        color = a.get("color", "") if tag == "font" else ""
        color_match = self.COLOR.search(style)
        if color_match:
            color = color_match.group(1)
        if color:
            white = bool(self.WHITE.match(color))
        self.stack.append((tag, hidden, white, light_bg))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        if tag == "a" and self._link is not None:
            self._check_link(*self._link)
            self._link = None
        close_element(self.stack, tag)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._link is not None:
            self._link[1].append(data)
        _, hidden, white, light_bg = self.stack[-1]
        if hidden or (white and light_bg):
            text = " ".join(data.split())
            self.hidden_chars += len(text)
            if len(self.hidden_sample) < MAX_EVIDENCE:
                self.hidden_sample = (self.hidden_sample + " " + text).strip()

    def _check_link(self, href: str, texts: list[str]) -> None:
        shown = "".join(texts).strip()
        if not self.URL_TEXT.match(shown) or not href.lower().startswith(("http://", "https://")):
            return
        shown_host = _host(shown)
        href_host = _host(href.strip())
        if not _HOSTNAME.match(shown_host) or not _HOSTNAME.match(href_host):
            return  # link text that only starts like an address ("www.all-life"), or a mangled href
        if registered_domain(shown_host) != registered_domain(href_host):
            self.mismatches.append((shown_host, href_host))


#: A host name with at least two labels and a TLD of letters (what a reader takes for a web address).
_HOSTNAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$")


def _host(uri: str) -> str:
    try:
        return (urlsplit(uri if "://" in uri else "http://" + uri).hostname or "").lower()
    except ValueError:
        return ""


def _domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].strip().lower().rstrip(".") if "@" in addr else ""


@dataclass
class MailView:
    """One mail as the rules read it; derived values are computed on first use and shared by all rules."""

    mail: ParsedMail
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @cached_property
    def header_names(self) -> set[str]:
        return {n.lower() for n, _ in self.mail.headers}

    def raw_header(self, name: str) -> str | None:
        """A header as the sender wrote it (unfolded, encoded words left alone): the parsed value of structured
        headers like Date is re-formatted by the parser and would hide a malformed original."""
        if self.mail.message is None:
            return self.mail.header(name)
        lname = name.lower()
        try:
            for key, value in self.mail.message.raw_items():
                if key.lower() == lname:
                    return " ".join(str(value).split())
        except Exception:  # a header the parser could not keep raw: the decoded value will do
            return self.mail.header(name)
        return None

    @cached_property
    def sender(self) -> tuple[str, str]:
        """(display name, address) of the From header."""
        name, addr = parseaddr(self.mail.header("From") or "")
        return name.strip(), addr.strip()

    @cached_property
    def body(self) -> str:
        return (self.mail.text + "\n" + self.mail.html_text)[:MAX_SCAN]

    @cached_property
    def rawbody(self) -> str:
        return (self.mail.text + "\n" + self.mail.html)[:MAX_SCAN]

    @cached_property
    def full(self) -> str:
        return self.mail.raw[:MAX_SCAN].decode("latin-1")

    @cached_property
    def html(self) -> _HtmlFacts:
        facts = _HtmlFacts()
        if self.mail.html:
            try:
                facts.feed(self.mail.html[:MAX_SCAN])
                facts.close()
            except Exception:  # HTMLParser is lenient; what was read before a failure still counts
                pass
        return facts


# --- eval tests: each returns evidence (a short string, "" for none) when it matches, None when not --------------

EvalFn = Callable[[MailView, Mapping[str, Any]], str | None]

#: RFC 5322 date-time, with the obsolete forms it still allows (two-digit years, named zones).
_RFC5322_DATE = re.compile(
    r"^\s*(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s*,\s*)?\d{1,2}\s+"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{2,4}\s+\d{1,2}:\d{2}(?::\d{2})?\s*"
    r"(?:[+-]\d{4}|UT|GMT|[ECMP][SD]T|[A-IK-Za-ik-z])\s*(?:\(.*\))?\s*$", re.I)


def _date_invalid(view: MailView, args: Mapping[str, Any]) -> str | None:
    value = view.raw_header("Date")
    if value is None:
        return None  # MISSING_DATE says so
    if not _RFC5322_DATE.match(value):
        return value[:MAX_EVIDENCE]
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return value[:MAX_EVIDENCE]
    return None


def _date_in_future(view: MailView, args: Mapping[str, Any]) -> str | None:
    value = view.raw_header("Date")
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return value[:MAX_EVIDENCE] if when > view.now + timedelta(hours=float(args.get("hours", 24))) else None


_ADDR_IN_TEXT = re.compile(r"[a-z0-9._%+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+)", re.I)


def _from_display_other_address(view: MailView, args: Mapping[str, Any]) -> str | None:
    name, addr = view.sender
    domain = _domain_of(addr)
    if not name or not domain or re.search(r"\bvia\b", name, re.I) or "list-id" in view.header_names:
        return None  # mailing lists and groups rewrite From as "someone@x via List" legitimately
    for shown in _ADDR_IN_TEXT.findall(name):
        if registered_domain(shown) != registered_domain(domain):
            return f"{name[:40]} <{addr}>"
    return None


def _compile_brands(brands: Mapping[str, Sequence[str]]) -> list[tuple[re.Pattern[str], tuple[str, ...]]]:
    out = []
    for words, domains in brands.items():
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words.split("|"))
        out.append((re.compile(rf"\b(?:{alternatives})\b", re.I), tuple(d.lower() for d in domains)))
    return out


def _from_display_brand(view: MailView, args: Mapping[str, Any]) -> str | None:
    name, addr = view.sender
    domain = _domain_of(addr)
    if not name or not domain:
        return None
    for pattern, domains in args["_brands"]:
        found = pattern.search(name)
        if found and not any(domain == d or domain.endswith("." + d) for d in domains):
            return f"{found.group(0)} from {domain}"
    return None


def _from_numeric_local(view: MailView, args: Mapping[str, Any]) -> str | None:
    name, addr = view.sender
    local = addr.partition("@")[0]
    if not name and local.isdigit() and len(local) >= int(args.get("min_digits", 5)):
        return addr
    return None


def _reply_to(view: MailView) -> str:
    return _domain_of(parseaddr(view.mail.header("Reply-To") or "")[1])


def _reply_to_other_domain(view: MailView, args: Mapping[str, Any]) -> str | None:
    reply, sender = _reply_to(view), _domain_of(view.sender[1])
    if reply and sender and registered_domain(reply) != registered_domain(sender):
        return f"{sender} -> {reply}"
    return None


def _reply_to_freemail(view: MailView, args: Mapping[str, Any]) -> str | None:
    reply_addr = parseaddr(view.mail.header("Reply-To") or "")[1].lower()
    reply = _domain_of(reply_addr)
    if reply in args["freemail"] and reply_addr != view.sender[1].lower():
        return reply_addr
    return None


def _freemail_bulk(view: MailView, args: Mapping[str, Any]) -> str | None:
    domain = _domain_of(view.sender[1])
    if domain not in args["freemail"]:
        return None
    offer = args["_offer"].search(view.body)
    return f"{domain}: {offer.group(0)}" if offer else None


_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|antw)\s*(?:\[\d+\])?\s*:", re.I)


def _fake_reply(view: MailView, args: Mapping[str, Any]) -> str | None:
    subject = view.mail.header("Subject") or ""
    # Thread-Index: Outlook threads by it and some of its gateways drop In-Reply-To.
    if _REPLY_PREFIX.match(subject) and not ({"in-reply-to", "references", "thread-index"} & view.header_names):
        return subject[:MAX_EVIDENCE]
    return None


def _subject_all_caps(view: MailView, args: Mapping[str, Any]) -> str | None:
    subject = view.mail.header("Subject") or ""
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= int(args.get("min_letters", 10)) and all(c.isupper() for c in letters):
        return subject[:MAX_EVIDENCE]
    return None


def _html_only(view: MailView, args: Mapping[str, Any]) -> str | None:
    return "" if view.mail.html.strip() and not view.mail.text.strip() else None


def _html_hidden_text(view: MailView, args: Mapping[str, Any]) -> str | None:
    facts = view.html
    return facts.hidden_sample if facts.hidden_chars >= int(args.get("min_chars", 200)) else None


def _html_image_only(view: MailView, args: Mapping[str, Any]) -> str | None:
    if not view.mail.html or not view.html.images:
        return None
    visible = len("".join((view.mail.text + view.mail.html_text).split()))
    return f"{view.html.images} image(s), {visible} characters of text" if visible < int(
        args.get("max_chars", 400)) else None


def _link_text_mismatch(view: MailView, args: Mapping[str, Any]) -> str | None:
    # A link through the sender's own domain is its click tracking (newsletters count clicks that way and
    # redirect to the address shown); only a link to a third domain hides where it leads.
    sender = registered_domain(_domain_of(view.sender[1])) if _domain_of(view.sender[1]) else ""
    for shown, real in view.html.mismatches:
        if registered_domain(real) != sender:
            return f"shows {shown}, leads to {real}"
    return None


EVALS: dict[str, EvalFn] = {
    "date_invalid": _date_invalid,
    "date_in_future": _date_in_future,
    "from_display_other_address": _from_display_other_address,
    "from_display_brand": _from_display_brand,
    "from_numeric_local": _from_numeric_local,
    "reply_to_other_domain": _reply_to_other_domain,
    "reply_to_freemail": _reply_to_freemail,
    "freemail_bulk": _freemail_bulk,
    "fake_reply": _fake_reply,
    "subject_all_caps": _subject_all_caps,
    "html_only": _html_only,
    "html_hidden_text": _html_hidden_text,
    "html_image_only": _html_image_only,
    "link_text_mismatch": _link_text_mismatch,
}


# --- rules ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    symbol: str
    kind: str
    description: str
    patterns: tuple[re.Pattern[str], ...] = ()
    header: str = ""
    negate: bool = False
    missing: bool = False
    exists: bool = False
    unless_header: tuple[str, ...] = ()
    function: EvalFn | None = None
    args: Mapping[str, Any] = field(default_factory=dict)

    def match(self, view: MailView) -> str | None:
        """Evidence (possibly "") when the rule matches the mail, None when it does not."""
        if self.unless_header and any(h.lower() in view.header_names for h in self.unless_header):
            return None
        if self.kind == "eval":
            assert self.function is not None
            return self.function(view, self.args)
        if self.kind in ("header", "subject"):
            return self._match_header(view)
        if self.kind == "uri":
            return self._match_each(view.mail.uris)
        text = {"body": view.body, "rawbody": view.rawbody, "full": view.full}[self.kind]
        return self._match_each([text])

    def _match_header(self, view: MailView) -> str | None:
        values = view.mail.header_all(self.header)
        if self.missing:
            return "" if not values else None
        if self.exists and not values:
            return None
        if not self.patterns:
            return "" if values else None
        if self.negate and not values:
            values = [""]  # an absent header does not match the regex, so a negated rule matches
        return self._match_each(values)

    def _match_each(self, values: Sequence[str]) -> str | None:
        for value in values:
            evidence = self._search_all(value)
            if evidence is not None and not self.negate:
                return evidence
            if evidence is not None and self.negate:
                return None
        return "" if self.negate else None

    def _search_all(self, value: str) -> str | None:
        first = ""
        for n, pattern in enumerate(self.patterns):
            found = pattern.search(value)
            if found is None:
                return None
            if n == 0:
                first = found.group(0)
        return " ".join(first.split())[:MAX_EVIDENCE]


# Complexity (C901) by design: a parser: one branch per rule field.
def _parse_rule(spec: Mapping[str, Any], where: str, lists: Mapping[str, Sequence[str]]) -> Rule:  # noqa: C901
    symbol = str(spec.get("symbol", ""))
    if not _SYMBOL_RE.match(symbol):
        raise ValueError(f"{where}: symbol must be upper case letters, digits and _, not {symbol!r}")
    where = f"{where} ({symbol})"
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}")
    unknown = set(spec) - {"symbol", "kind", "description", "regex", "flags", "negate", "missing", "exists",
                           "unless_header", "header", "function", "args"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    flags = 0
    for letter in str(spec.get("flags", "")):
        if letter not in _FLAGS:
            raise ValueError(f"{where}: unknown regex flag {letter!r}")
        flags |= _FLAGS[letter]
    raw = spec.get("regex", [])
    regexes = [raw] if isinstance(raw, str) else list(raw)
    try:
        patterns = tuple(re.compile(r, flags) for r in regexes)
    except re.error as exc:
        raise ValueError(f"{where}: bad regex: {exc}") from exc
    header = "Subject" if kind == "subject" else str(spec.get("header", ""))
    if kind == "header" and not header:
        raise ValueError(f"{where}: a header rule names its header")
    missing, exists = bool(spec.get("missing", False)), bool(spec.get("exists", False))
    if kind not in ("header", "subject") and (missing or exists):
        raise ValueError(f"{where}: missing/exists apply to header rules only")
    if kind not in ("eval", "header") and not patterns:
        raise ValueError(f"{where}: a {kind} rule needs a regex")
    function = None
    args: dict[str, Any] = dict(spec.get("args", {}))
    if kind == "eval":
        name = spec.get("function")
        if name not in EVALS:
            raise ValueError(f"{where}: unknown eval function {name!r}")
        function = EVALS[name]
        for key, value in list(args.items()):
            if isinstance(value, str) and value.startswith("@"):
                if value[1:] not in lists:
                    raise ValueError(f"{where}: args.{key}: no list {value[1:]!r} in [lists]")
                args[key] = frozenset(str(v).lower() for v in lists[value[1:]])
        if "brands" in args:
            args["_brands"] = _compile_brands(args["brands"])
        if "offer" in args:
            try:
                args["_offer"] = re.compile(str(args["offer"]), re.I)
            except re.error as exc:
                raise ValueError(f"{where}: bad regex in args.offer: {exc}") from exc
    elif kind == "header" and not (patterns or missing or exists):
        raise ValueError(f"{where}: a header rule needs a regex, missing or exists")
    return Rule(symbol=symbol, kind=kind, description=str(spec.get("description", "")), patterns=patterns,
                header=header, negate=bool(spec.get("negate", False)), missing=missing, exists=exists,
                unless_header=tuple(spec.get("unless_header", ())), function=function, args=args)


def load_rules(path: Path = RULES_PATH) -> tuple[Rule, ...]:
    """The rules of a rule file, compiled; a malformed rule raises ValueError naming it."""
    data = tomllib.loads(path.read_text())
    lists = data.get("lists", {})
    rules = tuple(_parse_rule(spec, f"{path.name} rule {n + 1}", lists) for n, spec in enumerate(data.get("rule", [])))
    seen: set[str] = set()
    for rule in rules:
        if rule.symbol in seen:
            raise ValueError(f"{path.name}: symbol {rule.symbol} is used by two rules")
        seen.add(rule.symbol)
    return rules


def evaluate(rules: Sequence[Rule], mail: ParsedMail, now: datetime | None = None) -> list[tuple[str, str]]:
    """(symbol, reason) of every rule that matches ``mail``."""
    view = MailView(mail, now) if now is not None else MailView(mail)
    hits = []
    for rule in rules:
        evidence = rule.match(view)
        if evidence is not None:
            hits.append((rule.symbol, f"{rule.description} ({evidence})" if evidence else rule.description))
    return hits


#: The shipped rules, compiled at import.
DEFAULT_RULES = load_rules()


class RulesCheck(Check):
    """Records the symbol of every shipped rule that matches the mail."""

    name = "rules"
    stage = Stage.DATA
    timeout = 5.0
    symbols = tuple(r.symbol for r in DEFAULT_RULES)

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        # Regexes over up to MAX_SCAN characters per rule: off the event loop.
        for symbol, reason in await asyncio.to_thread(evaluate, DEFAULT_RULES, ctx.mail):
            ctx.add(symbol, reason)
