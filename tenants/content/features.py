"""What the content model reads of a mail: normalised text, URL and HTML-structure tokens, hashed into one vector.

The features favour what generalises across mail collections (the words of the subject and the visible body, the
registrable domains and shape of its URLs, its HTML and MIME structure) over the habits of the collections a model
was trained on (Received hosts, mailer ids, list footers' addresses, export headers): no header but Subject and the
MIME structure is read. Addresses, including the ``[removed]`` redactions and placeholder recipients some corpora
carry, become one token, so a model cannot learn a corpus by its redaction. Tokens and byte n-grams are hashed into
:data:`N_FEATURES` buckets (binary, scaled to unit length), so no vocabulary is stored. The hashing is done here with
numpy rather than by scikit-learn's ``HashingVectorizer``: its per-call overhead and Python n-gram analyzer cost
5 ms per mail, the rolling hash below 1 ms, and the ingress runs it on every mail.

Both the ingress (from :class:`smtp.mime.ParsedMail`) and training (from raw bytes, :func:`mail_text`) go through
:func:`tokens`, so a mail yields the same vector in either place.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Protocol

import numpy as np
from scipy.sparse import csr_matrix

from tenants.mail.bayes import MailParts, registered_domain
from tenants.mail.mimetext import one_line, parse_message, split_parts

#: Hash space of the features: 2^20 buckets keeps collisions rare for a few hundred thousand distinct n-grams.
N_FEATURES = 2**20
#: Characters of normalised text (subject and visible body) read for words; the rest of a long mail adds little.
MAX_WORD_CHARS = 20_000
#: Characters of normalised text read for character n-grams (the costly family: a few per character).
MAX_CHAR_CHARS = 3_000
#: Byte n-gram lengths of the normalised text (across word boundaries, as the TREC filters did).
CHAR_NGRAMS = (3, 5)
#: Words longer than this become a shape token (ids, hashes, base64 runs are too rare to learn one by one).
MAX_WORD = 24
#: URLs of a mail whose features are taken.
MAX_URLS = 50
#: Every setting that changes the vector of a mail; its hash is stored with a model so a mismatch is detected.
#: Bump ``version`` whenever :func:`tokens` changes what it yields.
FEATURE_CONFIG: dict[str, object] = {
    "version": 3,
    "hash": "crc32 words, rolling fnv byte n-grams, mixed",
    "n_features": N_FEATURES,
    "max_word_chars": MAX_WORD_CHARS,
    "max_char_chars": MAX_CHAR_CHARS,
    "char_ngrams": list(CHAR_NGRAMS),
    "max_word": MAX_WORD,
    "max_urls": MAX_URLS,
}


def config_hash(config: dict[str, object] | None = None) -> str:
    """A short hash of a feature configuration (the current one by default)."""
    text = json.dumps(config if config is not None else FEATURE_CONFIG, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- what the features read -------------------------------------------------------------------------------------


class MailLike(MailParts, Protocol):
    """The parts of a parsed mail the features read (:class:`smtp.mime.ParsedMail` and :class:`MailText` have them)."""

    @property
    def html(self) -> str: ...


@dataclass(frozen=True)
class Part:
    """A leaf MIME part that is not body text: its declared name and type."""

    filename: str | None
    declared_type: str


@dataclass
class MailText:
    """A mail parsed the way the ingress parses it (:func:`smtp.mime.parse_mail`), reduced to what features read."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html: str = ""
    attachments: list[Part] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)


#: Most MIME parts walked, as the ingress does (smtp.mime.MAX_PARTS).
MAX_PARTS = 500
#: Most characters of body text kept, as the ingress does (smtp.mime.MAX_TEXT).
MAX_TEXT = 512 * 1024


def mail_text(raw: bytes) -> MailText:
    """Parse raw mail bytes like the ingress; never raises (an unparseable mail gives an empty :class:`MailText`)."""
    try:
        msg = parse_message(raw)
    except Exception:
        return MailText()
    out = MailText()
    for name, value in msg.raw_items():
        try:
            out.headers.append((name, one_line(msg.policy.header_fetch_parse(name, value))))
        except Exception:  # one bad header field (a broken Message-ID) must not hide the others
            continue
    parts = split_parts(msg, max_parts=MAX_PARTS)
    out.text = "\n".join(parts.texts)[:MAX_TEXT]
    out.html = "\n".join(parts.htmls)[:MAX_TEXT]
    out.attachments = [Part(leaf.filename, leaf.content_type) for leaf in parts.leaves]
    return out


# --- normalisation ------------------------------------------------------------------------------------------------

_HIDDEN_BLOCKS = re.compile(r"(?is)<(script|style|head|title)\b.*?</\1\s*>")
_COMMENT = re.compile(r"(?s)<!--.*?-->")
_TAG = re.compile(r"(?s)<[^>]*>")
_TAG_NAME = re.compile(r"<([a-zA-Z][a-zA-Z0-9]{0,9})\b")
_HREF = re.compile(r"""(?i)\b(?:href|src|action)\s*=\s*["']?([^"'\s>]+)""")
_URL = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]+""")
#: An address, or a redaction that stands where an address was (``[removed]``), or an address placeholder.
_ADDRESS = re.compile(r"(?<![\w.%+=-])[\w.%+=-]++@[\w-]+(?:\.[\w-]+)+|\[removed\]")
_DIGIT = re.compile(r"\d")
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_](?:[\w'$%.,-]*[^\W_])?|[$€£!]")
_IP_HOST = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$|^\[?[0-9a-f:]*:[0-9a-f:]+\]?$")
#: HTML tags whose presence is a structural cue (others are layout noise common to all HTML mail).
_CUE_TAGS = frozenset({"a", "img", "table", "font", "form", "input", "map", "area", "iframe", "object", "embed",
                       "center", "b", "u", "i", "strong", "blink", "marquee", "base", "meta", "style", "script",
                       "button", "select", "textarea", "span", "div", "p", "br", "hr", "ul", "li", "h1", "h2"})
#: Headers whose presence (never their value) is a token: threading, list management, the standard fields.
_PRESENCE_HEADERS = ("in-reply-to", "references", "list-unsubscribe", "list-id", "mime-version", "date",
                     "message-id", "to", "cc", "reply-to", "x-mailer", "user-agent", "organization")
#: Inline-style cues of text meant to be hidden from the reader (hash busters, poisoning).
_HIDDEN_STYLE = re.compile(r"(?i)display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01]p[xt]"
                           r"|<font[^>]+size\s*=\s*[\"']?[01]\b")


def visible_text(markup: str) -> str:
    """The text an HTML part shows: comments, script, style and head dropped, tags become spaces, entities decoded."""
    text = _COMMENT.sub(" ", markup)
    text = _HIDDEN_BLOCKS.sub(" ", text)
    return html.unescape(_TAG.sub(" ", text))


def normalise(text: str) -> str:
    """Lower case, addresses and URLs masked to one token each, digits to 0, white space collapsed."""
    text = _ADDRESS.sub(" emailaddr ", text)
    text = _URL.sub(" urladdr ", text)
    return _WS.sub(" ", _DIGIT.sub("0", text.lower())).strip()


def _count_bucket(n: int) -> str:
    """Counts as classes: 0, 1, 2, 3-5, 6-10, many."""
    if n <= 2:
        return str(n)
    return "3-5" if n <= 5 else "6-10" if n <= 10 else "many"


def _url_tokens(urls: Iterable[str]) -> list[str]:
    """Registrable domain, top-level domain and shape of each URL (an IP host, a port, an ``@``, a long path)."""
    out: list[str] = []
    seen: set[str] = set()
    for url in urls:
        url = html.unescape(url).strip(".,;:!?")
        if url in seen:
            continue
        seen.add(url)
        if len(seen) > MAX_URLS:
            break
        rest = url.split("://", 1)[1] if "://" in url else url
        hostport, _, path = rest.partition("/")
        if "@" in hostport:
            out.append("u:userinfo")
            hostport = hostport.rpartition("@")[2]
        host, _, port = hostport.lower().partition(":")
        host = host.strip(".")
        if not host:
            continue
        if _IP_HOST.match(host):
            out.append("u:ip")
        else:
            labels = host.split(".")
            out.append("u:" + registered_domain(host))
            out.append("ut:" + labels[-1])
            out.append(f"ul:{min(len(labels), 6)}")
        if port:
            out.append("u:port")
        if url.lower().startswith("https:"):
            out.append("u:https")
        depth = path.count("/") + (1 if path else 0)
        out.append(f"ud:{min(depth, 5)}")
        if "?" in path:
            out.append("u:query")
        if "%" in host or "%" in path[:20]:
            out.append("u:escaped")
    out.append("un:" + _count_bucket(len(seen)))
    return out


def _structure_tokens(mail: MailLike, markup: str, plain: str, shown: str) -> list[str]:
    """MIME and HTML structure: which bodies the mail has, its tags, hidden text, attachments' types."""
    out: list[str] = []
    ctype = next((v for n, v in mail.headers if n.lower() == "content-type"), "text/plain")
    out.append("ct:" + ctype.split(";", 1)[0].strip().lower()[:40])
    has_text, has_html = bool(plain.strip()), bool(markup.strip())
    out.append(f"body:{int(has_text)}{int(has_html)}")
    if has_html:
        tags = {t.lower() for t in _TAG_NAME.findall(markup[:MAX_WORD_CHARS * 5])} & _CUE_TAGS
        out.extend("tag:" + t for t in tags)
        if _HIDDEN_STYLE.search(markup):
            out.append("html:hidden")
        ratio = len(shown) / max(1, len(markup))
        out.append(f"html:textratio:{min(int(ratio * 10), 9)}")
        if not shown.strip():
            out.append("html:notext")
    for part in mail.attachments[:20]:
        out.append("at:" + part.declared_type.lower()[:40])
        name = (part.filename or "").lower()
        if "." in name:
            out.append("ax:" + name.rsplit(".", 1)[1][:8])
    return out


def _domain_of(value: str) -> str:
    """The registrable domain of the address in a header value (``Name <a@b.example.com>`` → example.com), or ""."""
    addr = parseaddr(value)[1]
    host = addr.rpartition("@")[2].strip(" .>").lower() if "@" in addr else ""
    return registered_domain(host) if host and not _IP_HOST.match(host) else ""


def _header_tokens(mail: MailLike, url_domains: set[str]) -> list[str]:
    """How the mail was composed, never which hosts relayed it: threading and list headers present, the From
    domain aligned with the URLs' and the Message-ID's (a newsletter links to its own site; spamware forges ids)."""
    present: dict[str, str] = {}
    for name, value in mail.headers:
        present.setdefault(name.lower(), value)
    out = ["hh:" + name for name in _PRESENCE_HEADERS if name in present]
    precedence = present.get("precedence", "").strip().lower()
    if precedence:
        out.append("hp:" + precedence[:10])
    sender = _domain_of(present.get("from", ""))
    if not sender:
        out.append("al:nofrom")
        return out
    if url_domains:
        out.append("al:url=from" if sender in url_domains else "al:url!=from")
    mid = present.get("message-id", "").strip(" <>")
    mid_host = mid.rpartition("@")[2].strip(" .>").lower() if "@" in mid else ""
    if mid_host and not _IP_HOST.match(mid_host):
        out.append("al:mid=from" if registered_domain(mid_host) == sender else "al:mid!=from")
    reply = _domain_of(present.get("reply-to", ""))
    if reply:
        out.append("al:reply=from" if reply == sender else "al:reply!=from")
    return out


def tokens(mail: MailLike) -> tuple[list[str], str]:
    """(the prefixed word, bigram, URL and structure tokens of a mail, its normalised text for character n-grams)."""
    subject = next((v for n, v in mail.headers if n.lower() == "subject"), "")
    markup = mail.html or ""
    shown = visible_text(markup) if markup else ""
    plain = mail.text or ""
    # Most HTML mail carries the same text twice (multipart/alternative): the plain part when it says enough.
    body = plain if len(plain.strip()) >= len(shown.strip()) // 2 else plain + "\n" + shown
    text = normalise(subject + "\n" + body[:MAX_WORD_CHARS * 2])[:MAX_WORD_CHARS]
    out: list[str] = []
    previous = ""
    for word in _WORD.findall(text):
        if len(word) > MAX_WORD:
            word = f"<long:{word[0]}>"
        out.append("w:" + word)
        if previous:
            out.append(f"b:{previous} {word}")
        previous = word
    subj = normalise(subject)
    out.extend("s:" + w for w in _WORD.findall(subj))
    if not subj:
        out.append("s:<none>")
    elif sum(c.isupper() for c in subject) > 2 * max(1, sum(c.islower() for c in subject)):
        out.append("s:<caps>")
    urls = _URL.findall(plain + "\n" + shown) + [u for u in _HREF.findall(markup)
                                                  if u.lower().startswith(("http:", "https:", "www."))]
    url_tokens = _url_tokens(urls)
    out.extend(url_tokens)
    out.extend(_header_tokens(mail, {t[2:] for t in url_tokens if t.startswith("u:") and "." in t}))
    out.extend(_structure_tokens(mail, markup, plain, shown))
    out.append(f"len:{min(len(text).bit_length(), 20)}")  # of the normalised text: a redaction changes no length
    return out, text[:MAX_CHAR_CHARS]


#: Multiplier of the rolling hash of character n-grams (FNV's 64-bit prime); arithmetic wraps modulo 2^64.
_PRIME = np.uint64(1099511628211)
#: Odd constant of the final mix (the golden ratio in 64 bits), so the low bits taken as the bucket are well spread.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _bucket(h: np.ndarray) -> np.ndarray:
    """Mix 64-bit hashes and fold them into the feature space."""
    h = h ^ (h >> np.uint64(31))
    h = h * _MIX
    h = h ^ (h >> np.uint64(29))
    return h % np.uint64(N_FEATURES)


def _word_buckets(words: list[str]) -> np.ndarray:
    """Buckets of the prefixed tokens (CRC-32 of their UTF-8, mixed)."""
    crc = np.fromiter((zlib.crc32(w.encode("utf-8", "replace")) for w in words), dtype=np.uint64, count=len(words))
    return _bucket(crc)


def _gram_buckets(text: str) -> np.ndarray:
    """Buckets of every byte n-gram of the text (sizes :data:`CHAR_NGRAMS`), a rolling hash computed by numpy."""
    data = np.frombuffer(f" {text} ".encode("utf-8", "replace"), dtype=np.uint8).astype(np.uint64)
    lo, hi = CHAR_NGRAMS
    parts: list[np.ndarray] = []
    with np.errstate(over="ignore"):
        for size in range(lo, hi + 1):
            count = len(data) - size + 1
            if count <= 0:
                break
            h = np.full(count, size, dtype=np.uint64)
            for k in range(size):
                h = h * _PRIME + data[k:k + count]
            parts.append(_bucket(h))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


def vectorize(mails: Iterable[MailLike]) -> csr_matrix:
    """The feature rows of mails: one CSR row each, binary features scaled to unit length."""
    indptr = [0]
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for mail in mails:
        words, text = tokens(mail)
        with np.errstate(over="ignore"):
            both = np.sort(np.concatenate([_word_buckets(words), _gram_buckets(text)]))
        row = both[np.r_[True, both[1:] != both[:-1]]].astype(np.int32) if len(both) else both.astype(np.int32)
        indices.append(row)
        values.append(np.full(len(row), 1.0 / math.sqrt(len(row)) if len(row) else 0.0, dtype=np.float32))
        indptr.append(indptr[-1] + len(row))
    return csr_matrix((np.concatenate(values) if values else np.empty(0, np.float32),
                       np.concatenate(indices) if indices else np.empty(0, np.int32),
                       np.array(indptr, dtype=np.int64)), shape=(len(indptr) - 1, N_FEATURES))
