"""Per-tenant Bayes: a tokenizer, Robinson/Fisher chi-square combining, and token counts in the tenant's tables.

Each tenant trains its own classifier (from the quarantine, the API or ``mailward bayes train``); tokens are stored
as signed 64-bit hashes in :class:`~tenants.models.BayesToken`, so no mail text is kept. The classifier follows
Gary Robinson's "A Statistical Approach to the Spam Problem" (2003) as SpamBayes implements it: a per-token
probability f(w) shrunk towards 0.5 for rare tokens, the most significant tokens only, and Fisher's chi-square
combination of spam and ham evidence.

This module reads mails through :class:`MailLike` (which :class:`smtp.mime.ParsedMail` satisfies), so ``tenants``
keeps importing none of the other packages.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import Table, case, delete, func, select, update
from sqlalchemy.orm import Session

from tenants.exceptions import TenantScopeError
from tenants.models import BayesCorpus, BayesToken
from tenants.policy import Policy
from tenants.scope import RAW_SQL, Scope, current_scope_or_none, tenant_scope

# --- what the tokenizer reads ---------------------------------------------------------------------------------------


class AttachmentLike(Protocol):
    """An attachment as the tokenizer and the content model's features read it (its declared name and type)."""

    @property
    def filename(self) -> str | None: ...

    @property
    def declared_type(self) -> str: ...


class MailParts(Protocol):
    """What every reader of a parsed mail here reads (the tokenizer, the content model's features): its header
    fields, its body text and its attachments."""

    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...

    @property
    def text(self) -> str: ...

    @property
    def attachments(self) -> Sequence[AttachmentLike]: ...


class MailLike(MailParts, Protocol):
    """The parts of a parsed mail the tokenizer reads (:class:`smtp.mime.ParsedMail` has them)."""

    @property
    def message(self) -> Message | None: ...

    @property
    def html_text(self) -> str: ...

    @property
    def uris(self) -> Sequence[str]: ...


# --- tokenizer ------------------------------------------------------------------------------------------------------

#: Body characters tokenized (decoded text and the visible text of HTML); the rest of a long mail adds little.
MAX_BODY_CHARS = 100_000
#: Distinct tokens kept per mail: bounds the size of the one SELECT a classification runs.
MAX_TOKENS = 3_000
#: URIs of a mail that are tokenized.
MAX_URIS = 100
#: Body words shorter than this are dropped (SpamBayes: they carry little and are numerous).
MIN_WORD = 3
#: Body words longer than this become a "skip" token of their first character and length class (SpamBayes).
MAX_WORD = 12
#: Header words longer than this are dropped (ids, hashes).
MAX_HEADER_WORD = 40
#: MIME parts looked at for their content types and encodings.
MAX_MIME_PARTS = 50

_WS = re.compile(r"\s+")
_URL_IN_TEXT = re.compile(r"(?i)\b(?:https?://|www\.)\S+")
_EMAIL_IN_TEXT = re.compile(r"(?i)\b[a-z0-9._%+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+)\b")
#: A line of base64 (or uuencode-like) payload pasted into a text part: never tokenized.
_ENCODED_LINE = re.compile(r"(?m)^[ \t]*[A-Za-z0-9+/]{40,}={0,2}[ \t\r]*$")
_HEADER_WORD = re.compile(r"[^\s\"'()<>\[\],;:]+")
_STRIP = "\"'`.,;:()[]{}<>*_=|~#/\\-+?^&@"
_IP_HOST = re.compile(r"^\[?\d{1,3}(?:\.\d{1,3}){3}\]?$|^\[?[0-9a-f:]*:[0-9a-f:]+\]?$")
_URL_PATH_SPLIT = re.compile(r"[/.?=&_\-+%#:;,~]+")
#: Second-level labels of country domains under which registrations sit one level deeper (example.co.uk).
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gob", "nic"})
#: Headers whose words become tokens, each with its prefix.
_WORD_HEADERS = {"x-mailer": "xm:", "user-agent": "xm:", "organization": "org:"}
#: Headers whose number of occurrences becomes a token (SpamBayes' "safe_headers": present in most mail, never
#: names a host or a person, so the count says how the mail was composed and relayed).
_COUNTED_HEADERS = ("abuse-reports-to", "date", "errors-to", "from", "importance", "in-reply-to", "message-id",
                    "mime-version", "organization", "received", "reply-to", "return-path", "subject", "to",
                    "user-agent", "x-abuse-info", "x-complaints-to", "x-face")
#: Words of the subject and runs of punctuation in it (SpamBayes: "!!!" and "$$$" are clues of their own).
_SUBJECT_WORD = re.compile(r"[\w$.%'-]+")
_SUBJECT_PUNCT = re.compile(r"[^\w\s]{2,}|[!$%]")
#: Body word pairs tokenized as bigrams (SpamBayes' optional bigrams): "click here" says more than each word.
USE_BIGRAMS = True


def registered_domain(host: str) -> str:
    """The registrable part of a host name by a two-label heuristic (no public suffix list): a.b.example.co.uk →
    example.co.uk, mail.example.com → example.com."""
    labels = host.lower().strip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _domain_tokens(prefix: str, domain: str) -> list[str]:
    domain = domain.lower().strip(".")
    if not domain:
        return [prefix + "none"]
    if _IP_HOST.match(domain):
        return [prefix + "ip"]
    reg = registered_domain(domain)
    return [prefix + domain, prefix + "." + reg] if reg != domain else [prefix + domain]


def _count_bucket(n: int) -> str:
    if n <= 2:
        return str(n)
    if n <= 5:
        return "3-5"
    if n <= 10:
        return "6-10"
    return "many"


def _words(text: str, prefix: str = "", bigrams: bool = False) -> Iterator[str]:
    previous = ""
    for raw in _WS.split(text):
        word = raw.strip(_STRIP).lower()
        n = len(word)
        if n < MIN_WORD:
            continue
        if n > MAX_WORD:
            # Long runs (mangled words, unknown charsets, ids) are too rare to learn one by one; their shape is not.
            yield f"{prefix}skip:{word[0]} {n // 10 * 10}"
            previous = ""
        else:
            yield prefix + word
            if bigrams and previous:
                yield f"{prefix}bi:{previous} {word}"
            previous = word


# Complexity (C901) by design: one branch per header kind.
def _header_tokens(mail: MailLike) -> Iterator[str]:  # noqa: C901
    headers: dict[str, list[str]] = {}
    for name, value in mail.headers:
        headers.setdefault(name.lower(), []).append(value)

    def first(name: str) -> str:
        values = headers.get(name)
        return values[0] if values else ""

    for header, prefix in _WORD_HEADERS.items():
        for value in headers.get(header, ())[:1]:
            for word in _HEADER_WORD.findall(value.lower()):
                word = word.strip(_STRIP)
                if word and len(word) <= MAX_HEADER_WORD:
                    yield prefix + word
    subject = first("subject")
    for word in _SUBJECT_WORD.findall(subject.lower()):
        word = word.strip(_STRIP)
        if len(word) > MAX_WORD:
            yield f"s:skip:{word[0]} {len(word) // 10 * 10}"
        elif word:
            yield "s:" + word
    for run in _SUBJECT_PUNCT.findall(subject):
        yield "s:" + run[:5]
    for header in _COUNTED_HEADERS:
        yield f"hdr:{header}:{min(len(headers.get(header, ())), 9)}"
    if not subject:
        yield "s:<none>"
    elif sum(c.isupper() for c in subject) > 2 * max(1, sum(c.islower() for c in subject)):
        yield "s:<caps>"

    display, addr = parseaddr(first("from"))
    domain = addr.rpartition("@")[2] if "@" in addr else ""
    yield from _domain_tokens("fd:", domain)
    if display:
        for word in _HEADER_WORD.findall(display.lower()):
            if len(word) <= MAX_HEADER_WORD:
                yield "fn:" + word
    else:
        yield "fn:<none>"
    local = addr.partition("@")[0].lower()
    if local:
        yield "fl:" + re.sub(r"\d+", "#", local)[:MAX_HEADER_WORD]
        digits = sum(c.isdigit() for c in local)
        yield "fl:<digits " + ("0>" if not digits else "1-3>" if digits < 4 else "4+>")

    rcpts = getaddresses(headers.get("to", []) + headers.get("cc", []))
    yield "rcpt:" + _count_bucket(sum(1 for _, a in rcpts if "@" in a))
    if "to" not in headers:
        yield "to:<none>"

    reply_to = parseaddr(first("reply-to"))[1]
    if not reply_to:
        yield "rt:<none>"
    else:
        rt_domain = reply_to.rpartition("@")[2].lower()
        yield "rt:same" if domain and registered_domain(rt_domain) == registered_domain(domain) else "rt:other"
        yield from _domain_tokens("rtd:", rt_domain)

    mid = first("message-id")
    mid_domain = mid.strip("<> ").rpartition("@")[2].lower() if "@" in mid else ""
    if not mid:
        yield "mid:<none>"
    elif domain and mid_domain and registered_domain(mid_domain) == registered_domain(domain):
        yield "mid:from-domain"
    else:
        yield from _domain_tokens("midd:", mid_domain)

    for header in ("date", "mime-version", "list-id", "list-unsubscribe", "in-reply-to", "references"):
        yield f"has:{header}:{'yes' if header in headers else 'no'}"
    precedence = first("precedence").strip().lower()
    if precedence:
        yield "prec:" + precedence[:20]
    yield from _received_tokens(headers.get("received", []))
    priority = first("x-priority").strip()[:1]
    if priority:
        yield "prio:" + priority


_RCVD_FROM = re.compile(r"^\s*from\s+(.*?)(?:\sby\s|;|$)", re.I | re.S)
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_HELO_KW = re.compile(r"\bhelo[ =]+\[?([^\s)\]]+)", re.I)
_HOSTNAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$", re.I)
#: Words that name a consumer access line in a reverse DNS name (SpamAssassin's RDNS_DYNAMIC, Spamhaus PBL).
_DYNAMIC_WORDS = re.compile(r"dsl|dial|dyn|pool|ppp|cable|dhcp|client|broadband|cust", re.I)
#: Received hops looked at, from the top.
MAX_RECEIVED = 10


def _is_private(octets: Sequence[str]) -> bool:
    a, b = int(octets[0]), int(octets[1])
    return a in (10, 127) or (a == 192 and b == 168) or (a == 172 and 16 <= b <= 31) or (a == 169 and b == 254)


def _received_tokens(values: Sequence[str]) -> Iterator[str]:
    """The shape of each relay hop, never its names or addresses: does the relay have reverse DNS, does it look
    like a consumer line, does its HELO agree with its reverse DNS (SpamAssassin's RDNS_NONE, HELO_MISMATCH)."""
    for value in values[:MAX_RECEIVED]:
        found = _RCVD_FROM.match(value)
        ip = _IPV4.search(found.group(1)) if found else None
        if found is None or ip is None:
            continue  # a local hop (pickup, IMAP fetch, a program) says nothing about the sender
        clause = found.group(1)
        if _is_private(ip.groups()):
            yield "rcvd:private"
            continue
        first = clause.split()[0].strip("[]()").lower() if clause.split() else ""
        helo_kw = _HELO_KW.search(clause)
        inner = clause[len(clause.split()[0]):] if clause.split() else ""
        if helo_kw:  # qmail "from rdns (HELO name)" and exim "from rdns (helo=name)"
            helo, rdns = helo_kw.group(1).lower(), first
        else:  # sendmail and postfix "from helo (rdns [ip])"
            helo = first
            names = [w.partition("@")[2] or w for w in re.findall(r"[\w.@-]+", inner.split("[")[0])]
            rdns = next((n.lower() for n in names if _HOSTNAME.match(n)), "")
        if not rdns or rdns == "unknown" or not _HOSTNAME.match(rdns) or _IPV4.fullmatch(rdns):
            yield "rcvd:rdns-none"
        else:
            octets = ip.groups()
            local_part = rdns[:-len(registered_domain(rdns))]  # the names the provider chose for the line
            if _DYNAMIC_WORDS.search(local_part) or sum(o in re.split(r"[.-]", local_part) for o in octets) >= 2:
                yield "rcvd:rdns-dynamic"
            else:
                yield "rcvd:rdns-ok"
            if _HOSTNAME.match(helo):
                yield "rcvd:helo-match" if registered_domain(helo) == registered_domain(rdns) else "rcvd:helo-other"
        if _IPV4.fullmatch(helo.strip("[]")):
            yield "rcvd:helo-ip"
        elif "." not in helo:
            yield "rcvd:helo-nodot"
        if "may be forged" in clause.lower():
            yield "rcvd:forged"


def _mime_tokens(mail: MailLike) -> Iterator[str]:
    msg = mail.message
    if msg is None:
        yield "mime:unparseable"
        return
    yield "ct:" + msg.get_content_type()
    for n, part in enumerate(msg.walk()):
        if n >= MAX_MIME_PARTS:
            break
        if part.is_multipart():
            yield "pt:" + part.get_content_type()
            continue
        ctype = part.get_content_type()
        yield "pt:" + ctype
        charset = part.get_content_charset()
        if charset:
            yield "cs:" + charset.lower()[:30]
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte:
            yield f"cte:{ctype.partition('/')[0]}:{cte[:20]}"
    for att in mail.attachments[:MAX_MIME_PARTS]:
        if att.filename and "." in att.filename:
            yield "ext:" + att.filename.rpartition(".")[2].lower()[:10]
    if mail.html_text and not mail.text:
        yield "mime:html-only"


def _uri_tokens(uris: Sequence[str], sender_domain: str) -> Iterator[str]:
    """Scheme, host and registered domain, path words of each URI; and whether any link stays at the sender's own
    domain (newsletters link home, much spam links elsewhere)."""
    sender_reg = registered_domain(sender_domain) if sender_domain else ""
    aligned = False
    for uri in uris[:MAX_URIS]:
        try:
            parts = urlsplit(uri if "://" in uri else "http://" + uri)
            host = (parts.hostname or "").lower()
            port = parts.port
        except ValueError:
            yield "u:<bad>"
            continue
        yield "proto:" + (parts.scheme.lower() or "none")
        yield from _domain_tokens("u:", host)
        aligned = aligned or (bool(host) and registered_domain(host) == sender_reg)
        if port is not None:
            yield "u:<port>"
        for piece in _URL_PATH_SPLIT.split(parts.path.lower()):
            if MIN_WORD <= len(piece) <= MAX_WORD:
                yield "up:" + piece
        if parts.query:
            yield "u:<query>"
    if uris:
        yield "u:<from-domain>" if aligned else "u:<other-domains>"


def _body_tokens(mail: MailLike) -> Iterator[str]:
    body = (mail.text + "\n" + mail.html_text)[:MAX_BODY_CHARS]
    body = _ENCODED_LINE.sub(" ", body)
    for domain in _EMAIL_IN_TEXT.findall(body):
        yield from _domain_tokens("e:", domain)
    body = _EMAIL_IN_TEXT.sub(" ", _URL_IN_TEXT.sub(" ", body))
    yield from _words(body, bigrams=USE_BIGRAMS)


def tokenize(mail: MailLike) -> list[str]:
    """The distinct tokens of a mail: prefixed header and MIME tokens, URL hosts and path words, body words.

    Only decoded text is read (text parts and what HTML shows), never transfer-encoded payloads or attachments.
    """
    seen: dict[str, None] = {}
    sender = parseaddr(next((v for n, v in mail.headers if n.lower() == "from"), ""))[1]
    sender_domain = sender.rpartition("@")[2].lower() if "@" in sender else ""
    sources = (_header_tokens(mail), _mime_tokens(mail), _uri_tokens(mail.uris, sender_domain), _body_tokens(mail))
    for source in sources:
        for token in source:
            if token not in seen:
                seen[token] = None
                if len(seen) >= MAX_TOKENS:
                    return list(seen)
    return list(seen)


def token_hash(token: str) -> int:
    """A token as a signed 64-bit integer (BLAKE2b, 8 bytes) for the BigInteger column."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big", signed=True)


def mail_hashes(mail: MailLike) -> list[int]:
    """The distinct token hashes of a mail (what training counts and classification looks up)."""
    return list(dict.fromkeys(token_hash(t) for t in tokenize(mail)))


# --- classifier -----------------------------------------------------------------------------------------------------

#: Robinson's s: how strongly the prior pulls the probability of a rarely seen token (1: like one sighting).
UNKNOWN_WORD_STRENGTH = 0.45
#: Robinson's x: the probability assumed for a token never seen.
UNKNOWN_WORD_PROB = 0.5
#: Tokens whose probability is closer to 0.5 than this are ignored as noise.
MIN_PROB_STRENGTH = 0.1
#: The most significant tokens of a mail that are combined.
MAX_DISCRIMINATORS = 150
#: Trained mails of each class before the classifier answers; the tenant policy's setting overrides it.
DEFAULT_MIN_TRAINED = Policy.bayes_min_trained


def token_probability(spam: int, ham: int, nspam: int, nham: int) -> float:
    """Robinson's f(w): the spam probability of a token seen in ``spam`` of ``nspam`` spam and ``ham`` of ``nham``
    ham mails, shrunk towards :data:`UNKNOWN_WORD_PROB` when it was seen rarely."""
    spam_ratio = spam / nspam if nspam else 0.0
    ham_ratio = ham / nham if nham else 0.0
    if spam_ratio + ham_ratio == 0:
        return UNKNOWN_WORD_PROB
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (UNKNOWN_WORD_STRENGTH * UNKNOWN_WORD_PROB + n * p) / (UNKNOWN_WORD_STRENGTH + n)


def chi2q(x2: float, dof: int) -> float:
    """P(chi-square with ``dof`` (even) degrees of freedom >= ``x2``)."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, dof // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probabilities: Iterable[float]) -> float:
    """Fisher/Robinson chi-square combination of token probabilities into the mail's spam probability.

    Only the :data:`MAX_DISCRIMINATORS` probabilities farthest from 0.5 (and at least :data:`MIN_PROB_STRENGTH`
    away) count; with none left the answer is 0.5 (no opinion).
    """
    strong = sorted((p for p in probabilities if abs(p - 0.5) >= MIN_PROB_STRENGTH),
                    key=lambda p: abs(p - 0.5), reverse=True)[:MAX_DISCRIMINATORS]
    if not strong:
        return 0.5
    n = len(strong)
    # Clamp away from 0 and 1 so that one extreme token cannot take the logarithm to infinity.
    ln_spam = math.fsum(math.log(max(1.0 - p, 1e-200)) for p in strong)
    ln_ham = math.fsum(math.log(max(p, 1e-200)) for p in strong)
    spamminess = 1.0 - chi2q(-2.0 * ln_spam, 2 * n)
    hamminess = 1.0 - chi2q(-2.0 * ln_ham, 2 * n)
    return (spamminess - hamminess + 1.0) / 2.0


# --- store ----------------------------------------------------------------------------------------------------------

#: Rows per INSERT … ON CONFLICT statement batch.
UPSERT_BATCH = 5_000


@dataclass(frozen=True)
class BayesStats:
    nspam: int
    nham: int
    tokens: int


def _in_tenant(tenant_id: int) -> AbstractContextManager[Scope]:
    """The tenant's scope; refuses to cross from another tenant's scope (the MSP scope may act for any tenant)."""
    scope = current_scope_or_none()
    if scope is not None and not scope.is_msp and scope.tenant_id != tenant_id:
        raise TenantScopeError("Bayes data of another tenant than the current scope")
    return tenant_scope(tenant_id)


def _upsert(session: Session, table: Table, keys: Sequence[str], rows: list[dict[str, int]],
            add: Sequence[str]) -> None:
    """INSERT rows, adding the ``add`` columns to an existing row's on conflict (SQLite and PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg_stmt = pg_insert(table)
        stmt: Any = pg_stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: table.c[c] + pg_stmt.excluded[c] for c in add})
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite_stmt = sqlite_insert(table)
        stmt = lite_stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: table.c[c] + lite_stmt.excluded[c] for c in add})
    else:
        raise NotImplementedError(f"Bayes storage does not support the {dialect} database")
    # A bulk upsert skips the tenant filter and before_flush, so the isolation guard wants a reason: every row carries
    # the tenant_id of the scope it was built in (_in_tenant), and the conflict keys start with it.
    stmt = stmt.execution_options(**{RAW_SQL: "Bayes upsert: rows carry the scope's tenant_id"})
    for start in range(0, len(rows), UPSERT_BATCH):
        session.execute(stmt, rows[start:start + UPSERT_BATCH])


def _count(mails: Iterable[MailLike]) -> tuple[int, Counter[int]]:
    counts: Counter[int] = Counter()
    n = 0
    for mail in mails:
        counts.update(mail_hashes(mail))
        n += 1
    return n, counts


def train(session: Session, tenant_id: int, mails: Iterable[MailLike], spam: bool) -> int:
    """Count the mails' tokens as spam (or ham) for the tenant; returns the number of mails trained.

    Counts are aggregated in memory and written with one bulk upsert, so training thousands of mails is a few
    statements. The caller commits.
    """
    n, counts = _count(mails)
    if not n:
        return 0
    column, other = ("spam", "ham") if spam else ("ham", "spam")
    with _in_tenant(tenant_id):
        rows = [{"tenant_id": tenant_id, "token": h, column: c, other: 0} for h, c in counts.items()]
        _upsert(session, BayesToken.__table__, ("tenant_id", "token"), rows, (column,))  # type: ignore[arg-type]
        corpus_rows = [{"tenant_id": tenant_id, "nspam": n if spam else 0, "nham": 0 if spam else n}]
        _upsert(session, BayesCorpus.__table__, ("tenant_id",), corpus_rows, ("nspam", "nham"))  # type: ignore[arg-type]
    return n


def untrain(session: Session, tenant_id: int, mails: Iterable[MailLike], spam: bool) -> int:
    """Take back an earlier :func:`train` of the same mails (e.g. a mail released from quarantine as ham)."""
    n, counts = _count(mails)
    if not n:
        return 0
    with _in_tenant(tenant_id):
        col = BayesToken.spam if spam else BayesToken.ham
        by_count: dict[int, list[int]] = {}
        for h, c in counts.items():
            by_count.setdefault(c, []).append(h)
        for c, hashes in by_count.items():
            for start in range(0, len(hashes), UPSERT_BATCH):
                session.execute(
                    update(BayesToken)
                    .where(BayesToken.tenant_id == tenant_id, BayesToken.token.in_(hashes[start:start + UPSERT_BATCH]))
                    .values({col: case((col > c, col - c), else_=0)})
                    .execution_options(synchronize_session=False))
        session.execute(delete(BayesToken).where(BayesToken.tenant_id == tenant_id, BayesToken.spam == 0,
                                                 BayesToken.ham == 0).execution_options(synchronize_session=False))
        ncol = BayesCorpus.nspam if spam else BayesCorpus.nham
        session.execute(update(BayesCorpus).where(BayesCorpus.tenant_id == tenant_id)
                        .values({ncol: case((ncol > n, ncol - n), else_=0)})
                        .execution_options(synchronize_session=False))
    return n


def stats(session: Session, tenant_id: int) -> BayesStats:
    """How much the tenant's Bayes has learnt."""
    with _in_tenant(tenant_id):
        row = session.execute(select(BayesCorpus.nspam, BayesCorpus.nham)
                              .where(BayesCorpus.tenant_id == tenant_id)).first()
        tokens = session.scalar(select(func.count()).select_from(BayesToken)
                                .where(BayesToken.tenant_id == tenant_id)) or 0
    return BayesStats(row[0] if row else 0, row[1] if row else 0, tokens)


#: Why the classifier's lookups may run as Core statements (the isolation guard wants a reason).
_RAW_LOOKUP = "Bayes lookup: filtered by the scope's tenant_id"


def classify_hashes(session: Session, tenant_id: int, hashes: Sequence[int], *,
                    min_trained: int = DEFAULT_MIN_TRAINED) -> float | None:
    """The spam probability of a mail given its token hashes; None while the tenant has trained fewer than
    ``min_trained`` spam or ham mails."""
    # Core selects on the tables, each filtered by the tenant itself: the ORM's statement handling, row loading and
    # second tenant filter cost more per mail than SQLite's own lookups of the few hundred tokens.
    with _in_tenant(tenant_id):
        counts = BayesCorpus.__table__.c
        corpus = session.execute(select(counts.nspam, counts.nham).where(counts.tenant_id == tenant_id)
                                 .execution_options(**{RAW_SQL: _RAW_LOOKUP})).first()
        if corpus is None or corpus[0] < max(min_trained, 1) or corpus[1] < max(min_trained, 1):
            return None
        nspam, nham = corpus
        if not hashes:
            return 0.5
        table = BayesToken.__table__.c
        rows = session.execute(select(table.spam, table.ham)
                               .where(table.tenant_id == tenant_id, table.token.in_(list(hashes)))
                               .execution_options(**{RAW_SQL: _RAW_LOOKUP})).all()
    return combine(token_probability(s, h, nspam, nham) for s, h in rows)


def classify(session: Session, tenant_id: int, mail: MailLike, *,
             min_trained: int = DEFAULT_MIN_TRAINED) -> float | None:
    """The tenant's spam probability of ``mail`` (0 ham … 1 spam), or None until it is trained enough."""
    return classify_hashes(session, tenant_id, mail_hashes(mail), min_trained=min_trained)
