"""SpamAssassin's header and relay ``eval:`` tests (HeaderEval, RelayEval, FreeMail, WLBLEval's address lists)."""

from __future__ import annotations

import re
from email.utils import getaddresses, parsedate_to_datetime
from fnmatch import fnmatchcase

from smtp.sarules.evalbase import EVALS, EvalEnv, in_range, num, register, text_of
from smtp.sarules.message import SaMessage

# --- constant answers: what is true of any mail a border gateway receives ---------------------------------------------

for _name, _value in (("check_all_trusted", False), ("check_no_relays", False), ("have_any_bounce_relays", False),
                      ("check_relays_unparseable", False), ("gated_through_received_hdr_remover", False),
                      ("check_for_fake_aol_relay_in_rcvd", False), ("check_for_forged_received_trail", False),
                      ("check_for_forged_eudoramail_received_headers", False),
                      ("check_for_forged_juno_received_headers", False)):
    EVALS[_name] = (lambda value: lambda msg, env, *a: value)(_value)


# --- headers --------------------------------------------------------------------------------------------------------

def _header_time(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _date_diff(msg: SaMessage, now: float) -> float | None:
    """Seconds from the Received times to the Date header (the smallest difference), as HeaderEval's date_diff."""
    date = _header_time(msg.first("Date")) if msg.first("Date") else None
    if date is None:
        return None
    times = [t for t in (_header_time(v.rpartition(";")[2]) for v in msg.values("Received")) if t is not None]
    if msg.envelope.client_ip:
        times.insert(0, now)
    if not times:
        return None
    diffs = [date - t for t in times]
    if len(diffs) > 1 and diffs[-1] == 0:
        diffs.pop()
    return min(diffs, key=abs)


@register("check_for_shifted_date")
def check_for_shifted_date(msg: SaMessage, env: EvalEnv, low: str = "undef", high: str = "undef") -> bool:
    if "date_diff" not in msg.cache:
        msg.cache["date_diff"] = _date_diff(msg, env.now)
    diff = msg.cache["date_diff"]
    if diff is None:
        return False
    lo, hi = num(low), num(high)
    return (lo is None or diff >= 3600 * lo) and (hi is None or diff < 3600 * hi)


@register("check_illegal_chars")
def check_illegal_chars(msg: SaMessage, env: EvalEnv, header: str, ratio: str, count: str) -> bool:
    if header == "ALL":
        text = "".join(r for n, r, _ in msg.headers if n.lower() not in ("subject", "from"))
    else:
        text = "".join(msg.values(header, raw=True))
    raw = text.encode("latin-1", "replace")
    if not raw:
        return False
    illegal = len(re.findall(rb"[\x80-\xff]", raw))
    if header == "ALL":
        illegal -= len(re.findall(rb"[\xa2\xa3\xa9\xae]", raw))
    return illegal / len(raw) > float(ratio) and illegal >= int(count)


@register("check_for_missing_to_header")
def check_for_missing_to_header(msg: SaMessage, env: EvalEnv) -> bool:
    return not msg.values("To") and not msg.values("Apparently-To")


@register("check_header_count_range")
def check_header_count_range(msg: SaMessage, env: EvalEnv, header: str, low: str, high: str) -> bool:
    n = len(msg.values(header))
    return float(low) <= n <= float(high)


@register("subject_is_all_caps")
def subject_is_all_caps(msg: SaMessage, env: EvalEnv) -> bool:
    subject = re.sub(r"^(?:(?:Re|Fwd|Fw|Aw|Antwort|Sv):\s*)+", "", msg.first("Subject"), flags=re.I)
    words = re.findall(r"[^\W\d_]+", subject)
    if len(words) < 2:
        return False
    letters = "".join(words)
    return letters.isupper() and len(letters) >= 10


@register("check_for_to_in_subject")
def check_for_to_in_subject(msg: SaMessage, env: EvalEnv, test: str) -> bool:
    to = [a for _, a in getaddresses(msg.values("To")) if a]
    subject = msg.first("Subject")
    if not to or not subject:
        return False
    addr = re.escape(to[0])
    user = re.escape(to[0].partition("@")[0])
    patterns = {"address": rf"^{addr}$", "user": rf"^{user}$", "user_contained": rf"\b{user}\b",
                "address_contained": rf"\b{addr}\b",
                "addrcontained": rf"\b{addr}\b"}
    pattern = patterns.get(test)
    return bool(pattern and re.search(pattern, subject, re.I))


def _sender_domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower().strip(">. ")


@register("check_for_matching_env_and_hdr_from")
def check_for_matching_env_and_hdr_from(msg: SaMessage, env: EvalEnv) -> bool:
    header = [a.lower() for _, a in getaddresses(msg.values("From")) if a]
    return bool(header and msg.envelope_from and msg.envelope_from.lower() in header)


@register("check_equal_from_domains")
def check_equal_from_domains(msg: SaMessage, env: EvalEnv) -> bool:
    header = [a for _, a in getaddresses(msg.values("From")) if a]
    if not header or not msg.envelope_from or "@" not in msg.envelope_from:
        return False
    hdom, edom = _sender_domain(header[0]), _sender_domain(msg.envelope_from)
    return bool(hdom and edom) and not (hdom == edom or hdom.endswith("." + edom) or edom.endswith("." + hdom))


@register("check_mailfrom_matches_rcvd")
def check_mailfrom_matches_rcvd(msg: SaMessage, env: EvalEnv) -> bool:
    sender = _sender_domain(msg.envelope_from) if "@" in msg.envelope_from else ""
    relays = msg.relays
    if not sender or not relays or not relays[0].rdns:
        return False
    rdns = relays[0].rdns
    return rdns == sender or rdns.endswith("." + sender)


@register("check_outlook_message_id")
def check_outlook_message_id(msg: SaMessage, env: EvalEnv) -> bool:
    mid = msg.first("Message-Id")
    m = re.match(r"^<[0-9a-f]{4}([0-9a-f]{8})\$[0-9a-f]{8}\$[0-9a-f]{8}\@", mid)
    if m is None:
        return False
    date = _header_time(msg.first("Date"))
    if date is None:
        return False
    x = 0.0023283064365387
    y = 27111902.8329849
    fudge = 250
    expected = int((date * x) + y)
    return abs(int(m.group(1), 16) - expected) >= fudge and abs(int(m.group(1), 16) - int((env.now * x) + y)) >= fudge


@register("check_ratware_name_id")
def check_ratware_name_id(msg: SaMessage, env: EvalEnv) -> bool:
    mid = msg.first("Message-Id")
    frm = msg.first("From")
    m = re.match(r"^<[A-Z]{28}\.([^>]+?)@", mid)
    return bool(m and re.search(r'"[^"]+"\s*<' + re.escape(m.group(1)) + "@", frm))


@register("check_ratware_envelope_from")
def check_ratware_envelope_from(msg: SaMessage, env: EvalEnv) -> bool:
    to = [a for _, a in getaddresses(msg.values("To")) if a]
    efrom = msg.envelope_from.lower()
    if not to or "@" not in efrom:
        return False
    domain = to[0].partition("@")[2].lower()
    return bool(domain) and bool(re.match(rf"^SRS\d=|^[^@]*{re.escape(domain)}\.[^@]*@", efrom, re.I)) and \
        not efrom.startswith("srs")


@register("check_unresolved_template")
def check_unresolved_template(msg: SaMessage, env: EvalEnv) -> bool:
    for name, _, value in msg.headers:
        if re.match(r"^(?:List-Unsubscribe|Received|X-[\w-]+)$", name, re.I):
            continue
        if re.search(r"%[A-Z][A-Z_-]", value):
            return True
    return False


def _recipients(msg: SaMessage) -> list[str]:
    return [a.lower() for _, a in getaddresses(msg.values("To") + msg.values("Cc")) if a]


@register("sorted_recipients")
def sorted_recipients(msg: SaMessage, env: EvalEnv) -> bool:
    rcpts = _recipients(msg)
    return len(rcpts) >= 7 and rcpts == sorted(rcpts) and len(set(rcpts)) == len(rcpts)


@register("similar_recipients")
def similar_recipients(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    rcpts = _recipients(msg)
    if len(rcpts) < 5:
        return False
    hits = sum(1 for a, b in zip(rcpts, rcpts[1:], strict=False)
               if a[:4] == b[:4] or a.partition("@")[0][-4:] == b.partition("@")[0][-4:])
    return in_range(hits / (len(rcpts) - 1), low, high)


@register("helo_ip_mismatch")
def helo_ip_mismatch(msg: SaMessage, env: EvalEnv) -> bool:
    for relay in msg.relays:
        if re.match(r"^\d+\.\d+\.\d+\.\d+$", relay.helo) and relay.helo != relay.ip and \
                relay.helo.rsplit(".", 1)[0] != relay.ip.rsplit(".", 1)[0]:
            return True
    return False


@register("check_for_no_rdns_dotcom_helo")
def check_for_no_rdns_dotcom_helo(msg: SaMessage, env: EvalEnv) -> bool:
    relays = msg.relays
    if not relays:
        return False
    first = relays[0]
    return not first.rdns and bool(re.search(r"(?:\.|^)(?:lycos\.com|lycos\.co\.uk|hotmail\.com|localhost\.com|"
                                             r"excite\.com|caramail\.com|cs\.com|aol\.com|msn\.com|yahoo\.com|"
                                             r"drizzle\.com)$", first.helo, re.I))


def _forged_rcvd(msg: SaMessage, domain_re: str, relay_re: str) -> bool:
    frm = msg.first("From")
    if not re.search(rf"@{domain_re}\b", frm, re.I):
        return False
    if not msg.relays:
        return False
    return not any(re.search(relay_re, r.rdns or r.by or "", re.I) for r in msg.relays)


@register("check_for_forged_gmail_received_headers")
def check_for_forged_gmail_received_headers(msg: SaMessage, env: EvalEnv) -> bool:
    if not re.search(r"@gmail\.com", msg.first("From"), re.I):
        return False
    if not msg.values("X-Gm-Message-State") and not msg.values("X-Google-DKIM-Signature") and \
            not any("google.com" in v for v in msg.values("Received")):
        return bool(msg.values("Received"))
    return False


@register("check_for_forged_yahoo_received_headers")
def check_for_forged_yahoo_received_headers(msg: SaMessage, env: EvalEnv) -> bool:
    return _forged_rcvd(msg, r"yahoo\.com", r"yahoo\.com$|yahoo\.net$|yahoo\.co\.")


@register("check_for_forged_hotmail_received_headers")
def check_for_forged_hotmail_received_headers(msg: SaMessage, env: EvalEnv) -> bool:
    return _forged_rcvd(msg, r"hotmail\.com", r"hotmail\.com$|outlook\.com$|msn\.com$")


@register("check_for_no_hotmail_received_headers")
def check_for_no_hotmail_received_headers(msg: SaMessage, env: EvalEnv) -> bool:
    if not re.search(r"@hotmail\.com", msg.first("From"), re.I):
        return False
    return not any(re.search(r"hotmail\.com|outlook\.com|msn\.com", v, re.I) for v in msg.values("Received"))


def _freemail(env: EvalEnv, addr: str) -> bool:
    domain = _sender_domain(addr)
    if not domain:
        return False
    exact, wildcards = env.freemail()
    return domain in exact or any(fnmatchcase(domain, d) for d in wildcards)


@register("check_freemail_from")
def check_freemail_from(msg: SaMessage, env: EvalEnv, regex: str | None = None) -> bool:
    addrs = [a for _, a in getaddresses(msg.values("From")) if "@" in a]
    return any(_freemail(env, a) and (regex is None or re.search(regex, a)) for a in addrs)


@register("check_freemail_header")
def check_freemail_header(msg: SaMessage, env: EvalEnv, header: str, regex: str | None = None) -> bool:
    value = text_of(msg.get(header if ":" in header or header == "EnvelopeFrom" else header))
    addrs = re.findall(r"[\w.+-]+@[\w.-]+", value)
    return any(_freemail(env, a) and (regex is None or re.search(regex, a)) for a in addrs)


@register("check_freemail_replyto")
def check_freemail_replyto(msg: SaMessage, env: EvalEnv, what: str = "replyto") -> bool:
    frm = [a.lower() for _, a in getaddresses(msg.values("From")) if "@" in a]
    reply = [a.lower() for _, a in getaddresses(msg.values("Reply-To")) if "@" in a]
    if what == "reply" and not reply:
        body = msg.body_nosubject.decode("utf-8", "replace")
        reply = [a.lower() for a in re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", body)[:20] if _freemail(env, a)]
    if not frm or not reply:
        return False
    frm_free, reply_free = _freemail(env, frm[0]), any(_freemail(env, r) for r in reply)
    if not (frm_free or reply_free):
        return False
    return any(r != frm[0] for r in reply) and (reply_free or frm_free)


def _in_addrlist(env: EvalEnv, listname: str, addrs: list[str]) -> bool:
    patterns = env.ruleset.addrlists.get(listname.upper(), set())
    return any(fnmatchcase(a.lower(), p) for a in addrs for p in patterns)


@register("check_from_in_list")
def check_from_in_list(msg: SaMessage, env: EvalEnv, listname: str) -> bool:
    return _in_addrlist(env, listname, [a for _, a in getaddresses(msg.values("From")) if a])


@register("check_replyto_in_list")
def check_replyto_in_list(msg: SaMessage, env: EvalEnv, listname: str) -> bool:
    return _in_addrlist(env, listname, [a for _, a in getaddresses(msg.values("Reply-To")) if a])


# SpamAssassin's ok_locales defaults to "all", with which the faraway-charset tests never fire: the same here.
for _name in ("check_for_faraway_charset", "check_for_faraway_charset_in_headers", "html_charset_faraway"):
    EVALS[_name] = lambda msg, env, *a: False


@register("check_msg_parse_flags")
def check_msg_parse_flags(msg: SaMessage, env: EvalEnv, flag: str) -> bool:
    msg.parts  # noqa: B018 (walking the parts records the MIME parse flags)
    msg.header_block  # noqa: B018
    return flag in msg.parse_flags


