"""One mail as SpamAssassin's rules see it: headers (decoded, raw, pseudo-headers), the rendered body, the decoded
raw body, the URIs, the relays, the MIME parts. Every view is computed on first use and shared by all rules.

Text is bytes, UTF-8 where SpamAssassin 4 normalises charsets (``normalize_charset 1``, its default), so the
rules' byte-level patterns (``[\\xc3][\\xa0]``) mean what they mean in SpamAssassin.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from email.header import decode_header
from email.message import Message
from email.utils import getaddresses
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from smtp.sarules.html import HtmlFacts, render
from tenants.mail.mimetext import parse_message

#: Bytes of each rendered text part the body rules read (SpamAssassin's body_part_scan_size).
BODY_PART_SCAN = 50_000
#: Bytes of each decoded part the rawbody rules read (rawbody_part_scan_size).
RAWBODY_PART_SCAN = 500_000
#: MIME parts looked at, at most (a bomb of parts is the attachment check's business).
MAX_PARTS = 500
#: URIs kept, at most.
MAX_URIS = 1000
#: Headers whose values are not RFC 2047 decoded (SpamAssassin's bug 6945 list).
_NOT_DECODED = re.compile(r"^(?:Received|(?:Resent-)?(?:Message-ID|Date)|MIME-Version|References|In-Reply-To|List-.*)$",
                          re.I)
_HEADER_LINE = re.compile(rb"^([^\x00-\x20\x7f-\xff:]+):[ \t]*(.*)$", re.S)
_TEXT_URI = re.compile(r"""(?i)\b(?:(?:https?|ftp)://|www\d{0,3}\.)[^\s<>"'`{}|\\^\[\]]+""")
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]{1,64}@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}\b")
_IP = re.compile(r"(?<![\d.])((?:\d{1,3}\.){3}\d{1,3})(?![\d.])|\b(IPv6:)?([0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7})\b",
                 re.I)


@dataclass(frozen=True)
class Envelope:
    """What the SMTP session knows that the mail does not say: the client, its HELO and reverse name, the
    envelope sender and recipients, and the receiving host's name."""

    client_ip: str = ""
    helo: str = ""
    rdns: str = ""
    mail_from: str = ""
    rcpts: tuple[str, ...] = ()
    hostname: str = ""
    #: The client authenticated (submission): SpamAssassin's ``auth=``.
    authenticated: bool = False


@dataclass(frozen=True)
class Relay:
    """One hop, as SpamAssassin's X-Spam-Relays-* pseudo-headers describe it."""

    ip: str
    rdns: str = ""
    helo: str = ""
    by: str = ""
    ident: str = ""
    envfrom: str = ""
    id: str = ""
    auth: str = ""

    def __str__(self) -> str:
        return (f"[ ip={self.ip} rdns={self.rdns} helo={self.helo} by={self.by} ident={self.ident} "
                f"envfrom={self.envfrom} intl=0 id={self.id} auth={self.auth} msa=0 ]")


@dataclass
class Part:
    """A leaf MIME part."""

    ctype: str
    charset: str
    encoding: str
    headers: list[tuple[str, str]]
    #: The payload as it stands in the mail (still encoded).
    encoded: str
    decoded: bytes
    filename: str | None = None
    #: Rendered text (text/plain and text/html parts), as str.
    text: str | None = None
    html: HtmlFacts | None = None


def _decode_words(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        out = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, bytes):
                out.append(chunk.decode(charset or "latin-1", "replace"))
            else:
                out.append(chunk)
        return "".join(out)
    except (LookupError, ValueError, AssertionError):
        return value


def parse_received(value: str) -> Relay | None:
    """The relay a Received header describes (best effort; None when it names no IP address)."""
    text = " ".join(value.split())
    if not text.lower().startswith("from "):
        return None
    head, _, tail = text.partition(" by ")
    by = tail.split()[0].rstrip(";") if tail.split() else ""
    ip = ""
    for m in _IP.finditer(head):
        candidate = m.group(1) or m.group(3)
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            continue
        ip = candidate
        break
    if not ip:
        return None
    words = head[5:].split()
    helo = words[0] if words else ""
    helo_at = re.search(r"\bhelo[= ]+([^\s)]+)", head, re.I)
    if helo_at:
        helo = helo_at.group(1)
    if helo.startswith("["):
        helo = helo.strip("[]")
    rdns_at = re.search(r"\(([^\s()\[]+)\s+\[", head)
    rdns = rdns_at.group(1) if rdns_at and rdns_at.group(1).lower() not in ("unknown", "may", "helo") \
        and "." in rdns_at.group(1) else ""
    envfrom_at = re.search(r"envelope-from\s*<?([^>\s)]*)", text, re.I)
    envfrom = envfrom_at.group(1) if envfrom_at else ""
    id_at = re.search(r"\bid\s+<?([^\s;>]+)", tail)
    rid = id_at.group(1) if id_at else ""
    auth_at = re.search(r"\bwith\s+(E?SMTPS?A|ESMTPSA|LMTPSA)\b", tail, re.I)
    auth = auth_at.group(1) if auth_at else ""
    return Relay(ip=ip, rdns=rdns.lower(), helo=helo, by=by, envfrom=envfrom, id=rid, auth=auth)


class SaMessage:
    """A mail and its envelope, viewed as SpamAssassin's rules view it."""

    def __init__(self, raw: bytes, envelope: Envelope | None = None, message: Message | None = None) -> None:
        self.raw = raw
        self.envelope = envelope or Envelope()
        self._message = message
        self._header_cache: dict[str, bytes | None] = {}
        #: Parse problems SpamAssassin records as flags (check_msg_parse_flags).
        self.parse_flags: set[str] = set()
        #: Values evals compute once per mail (MIME statistics, image sizes...).
        self.cache: dict[str, Any] = {}

    # --- headers ------------------------------------------------------------------------------------------------
    @cached_property
    def header_block(self) -> bytes:
        for sep in (b"\r\n\r\n", b"\n\n"):
            end = self.raw.find(sep)
            if end >= 0:
                return self.raw[:end + len(sep) // 2]
        self.parse_flags.add("missing_head_body_separator")
        return self.raw

    @cached_property
    def headers(self) -> list[tuple[str, str, str]]:
        """(name, raw value, decoded value) of every header in order; values as Latin-1 / UTF-8 text, unfolded."""
        out: list[tuple[str, str, str]] = []
        current: list[bytes] = []
        for line in self.header_block.replace(b"\r\n", b"\n").split(b"\n"):
            if line[:1] in (b" ", b"\t") and current:
                current.append(line)
                continue
            if current:
                self._add_header(out, b"\n".join(current))
            current = [line] if line else []
        if current:
            self._add_header(out, b"\n".join(current))
        return out

    @staticmethod
    def _add_header(out: list[tuple[str, str, str]], line: bytes) -> None:
        m = _HEADER_LINE.match(line)
        if m is None:
            return
        name = m.group(1).decode("latin-1")
        raw = m.group(2).decode("latin-1")
        unfolded = re.sub(r"\n[ \t]+", " ", m.group(2).decode("utf-8", "replace")).strip()
        decoded = unfolded if _NOT_DECODED.match(name) else _decode_words(unfolded)
        out.append((name, re.sub(r"\n\s+", " ", raw), decoded))

    @cached_property
    def _by_name(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for n, r, d in self.headers:
            out.setdefault(n.lower(), []).append((r, d))
        return out

    def values(self, name: str, raw: bool = False) -> list[str]:
        return [(r if raw else d) for r, d in self._by_name.get(name.lower(), ())]

    def first(self, name: str) -> str:
        found = self.values(name)
        return found[0] if found else ""

    def get(self, spec: str) -> bytes | None:
        """The value a header rule tests for ``spec`` (``From:addr``, ``ALL``, ``ToCc``, ``EnvelopeFrom``,
        ``X-Spam-Relays-External``...), or None when the header is absent."""
        if spec not in self._header_cache:
            self._header_cache[spec] = self._get(spec)
        return self._header_cache[spec]

    def _get(self, spec: str) -> bytes | None:
        name, *mods = spec.split(":")
        raw = "raw" in mods
        results: list[str]
        if name == "ALL":
            results = [f"{n}: {(r if raw else d)}\n" for n, r, d in self.headers]
        elif name.startswith("ALL-"):
            results = [f"{n}: {(r if raw else d)}\n" for n, r, d in self.headers]
        elif name.lower() == "envelopefrom":
            results = [self.envelope_from] if self.envelope_from else []
        elif name.lower().startswith("x-spam-relays-"):
            kind = name.lower()[len("x-spam-relays-"):]
            results = [" ".join(str(r) for r in self.relays)] if kind in ("external", "untrusted") else [""]
        elif name.lower() == "tocc":
            results = [v + "\n" for v in self.values("To", raw) + self.values("Cc", raw)]
        elif name == "MESSAGEID":
            results = [v + "\n" for h in ("X-Message-Id", "Resent-Message-Id", "X-Original-Message-ID", "Message-Id")
                       for v in self.values(h, raw)]
        else:
            results = [v + "\n" for v in self.values(name, raw or "addr" in mods or "name" in mods)]
        if not results:
            return None
        if "first" in mods:
            results = results[:1]
        elif "last" in mods:
            results = results[-1:]
        if "addr" in mods or "name" in mods:
            pairs = getaddresses([r.strip() for r in results])
            results = ([a for _, a in pairs if a] if "addr" in mods
                       else [" ".join(_decode_words(n).split()).strip("'") for n, _ in pairs if n])
            if "host" in mods or "domain" in mods:
                results = [a.rpartition("@")[2] for a in results if "@" in a]
        text = ("" if results and results[0].endswith("\n") else "\n").join(results)
        return text.encode("utf-8", "replace")

    @cached_property
    def envelope_from(self) -> str:
        if self.envelope.mail_from:
            return self.envelope.mail_from
        for name in ("X-Envelope-From", "Return-Path"):
            addrs = [a for _, a in getaddresses(self.values(name)) if a]
            if addrs:
                return addrs[0]
        return ""

    @cached_property
    def relays(self) -> list[Relay]:
        """The external relays, newest first: the SMTP client (when known), then the mail's Received headers."""
        out: list[Relay] = []
        env = self.envelope
        if env.client_ip:
            out.append(Relay(ip=env.client_ip, rdns=env.rdns.lower(), helo=env.helo, by=env.hostname,
                             envfrom=env.mail_from, auth="ESMTPA" if env.authenticated else ""))
        for value in self.values("Received"):
            relay = parse_received(value)
            if relay is not None and not relay.ip.startswith("127."):
                out.append(relay)
        return out

    # --- MIME ---------------------------------------------------------------------------------------------------
    @cached_property
    def message(self) -> Message | None:
        if self._message is not None:
            return self._message
        try:
            return parse_message(self.raw)
        except Exception:
            return None

    @cached_property
    def parts(self) -> list[Part]:
        out: list[Part] = []
        msg = self.message
        if msg is None:
            return out
        for n, part in enumerate(msg.walk()):
            if n >= MAX_PARTS:
                self.parse_flags.add("mimepart_limit_exceeded")
                break
            if part.is_multipart():
                if part.preamble is None and part is not msg and not part.get_boundary():
                    self.parse_flags.add("missing_mime_headers")
                if part.epilogue and part.epilogue.strip():
                    self.parse_flags.add("mime_epilogue_exists")
                continue
            out.append(self._leaf(part))
        return out

    @staticmethod
    def _leaf(part: Message) -> Part:
        ctype = part.get_content_type()
        charset = (part.get_content_charset() or "").lower()
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        payload = part.get_payload(decode=False)
        encoded = payload if isinstance(payload, str) else ""
        try:
            data = part.get_payload(decode=True)
        except Exception:
            data = None
        decoded = data if isinstance(data, bytes) else encoded.encode("latin-1", "replace")
        try:
            filename = part.get_filename()
        except Exception:
            filename = None
        raw_items = getattr(part, "raw_items", part.items)  # raw: no header-registry parse for each part
        headers = [(str(k), " ".join(str(v).split())) for k, v in raw_items()]
        out = Part(ctype, charset, encoding, headers, encoded, decoded, filename)
        if ctype in ("text/plain", "text/html"):
            try:
                text = decoded.decode(charset or "utf-8")
            except (LookupError, UnicodeDecodeError):
                text = decoded.decode("latin-1")
            if ctype == "text/html":
                out.html = render(text[:BODY_PART_SCAN * 4])
                out.text = out.html.text()
            else:
                out.text = text
        return out

    @cached_property
    def html(self) -> HtmlFacts:
        """The HTML facts of every HTML part together (empty when the mail has no HTML)."""
        facts = HtmlFacts()
        for part in self.parts:
            if part.html is not None:
                for name in ("chunks", "anchors", "titles", "comments", "scripts", "uris", "charsets"):
                    getattr(facts, name).extend(getattr(part.html, name))
                facts.tests |= part.html.tests
                for name in ("tags", "elements", "tags_seen", "elements_seen", "closed_extra", "obfuscation",
                             "length", "image_area", "images"):
                    setattr(facts, name, getattr(facts, name) + getattr(part.html, name))
                facts.max_size = max(facts.max_size, part.html.max_size)
                facts.min_size = min(facts.min_size, part.html.min_size)
                for tag, count in part.html.inside.items():
                    facts.inside[tag] = facts.inside.get(tag, 0) + count
        return facts

    # --- the texts rules read ------------------------------------------------------------------------------------
    @cached_property
    def body_text(self) -> str:
        """The rendered body without the Subject: text parts and the visible and invisible text of HTML parts,
        blank lines as paragraph breaks, other white space as one space."""
        texts = [p.text[:BODY_PART_SCAN] for p in self.parts if p.text is not None]
        text = "\n".join(texts)
        text = re.sub(r"\n+\s*\n+", "\x00", text)
        text = re.sub(r"\s+", " ", text)
        return text.replace("\x00", "\n")

    @cached_property
    def body(self) -> bytes:
        """What body rules read: the Subject line, then the paragraphs of the rendered body, one per line."""
        subject = self.first("Subject")
        return ((subject if subject else "") + "\n" + self.body_text).encode("utf-8", "replace")

    @cached_property
    def body_nosubject(self) -> bytes:
        return self.body_text.encode("utf-8", "replace")

    @cached_property
    def rawbody(self) -> bytes:
        """What rawbody rules read: every text part decoded (HTML markup kept), lines as they are."""
        chunks = []
        for p in self.parts:
            if p.ctype.startswith(("text/", "message/")) and p.ctype != "text/calendar":
                if p.text is not None and p.ctype == "text/plain":
                    chunks.append(p.text.encode("utf-8", "replace")[:RAWBODY_PART_SCAN])
                elif p.ctype == "text/html" and p.text is not None:
                    try:
                        chunks.append(p.decoded.decode(p.charset or "utf-8").encode("utf-8")[:RAWBODY_PART_SCAN])
                    except (LookupError, UnicodeDecodeError):
                        chunks.append(p.decoded[:RAWBODY_PART_SCAN])
                else:
                    chunks.append(p.decoded[:RAWBODY_PART_SCAN])
        return b"\n".join(chunks)

    @cached_property
    def full(self) -> bytes:
        return self.raw

    @cached_property
    def uris(self) -> list[bytes]:
        """Every URI of the mail and its canonical forms (``www.`` given a scheme, %-escapes decoded), as uri rules
        read them; addresses in the text count as ``mailto:``."""
        found: dict[str, None] = {}
        for uri in self.html.uris:
            found[uri] = None
        text = "\n".join(p.text for p in self.parts if p.text is not None and p.html is None)
        text += "\n" + self.html.text()
        for m in _TEXT_URI.finditer(text):
            found[m.group(0).rstrip(".,;:!?)'\"")] = None
        for m in _EMAIL.finditer(text):
            found["mailto:" + m.group(0)] = None
        out: dict[str, None] = {}
        for uri in list(found)[:MAX_URIS]:
            uri = uri.strip()
            out[uri] = None
            canonical = uri.replace("\\", "/")
            if re.match(r"(?i)^www\d{0,3}\.", canonical):
                canonical = "http://" + canonical
            if "%" in canonical:
                canonical = unquote(canonical)
            canonical = re.sub(r"(?i)^(https?://)[^/@?#]*@", r"\1", canonical)
            out[canonical] = None
        return [u.encode("utf-8", "replace") for u in out]
