"""What an HTML document does that phishing relies on: forms and password fields (also drawn by script), where
forms post and pages redirect, links whose text shows another address than they lead to, and text hidden inside
words (``Micro<span style="font-size:0">x</span>soft``) so that filters read other words than the reader does."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote

#: Characters of one HTML document parsed (a bigger document is analysed in its first part only).
MAX_HTML_CHARS = 2 * 1024 * 1024
#: Links, forms and redirects kept per document (a page with more adds nothing to the evidence).
MAX_ITEMS = 500
#: Base64 string literals in scripts decoded to look for a page inside (``document.write(atob("..."))``).
MAX_DECODED_BLOBS = 5
#: Shortest base64 literal worth decoding (an encoded login page is kilobytes).
MIN_BLOB_CHARS = 200
#: Style declarations that hide an element's content from the reader.
HIDING = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0(?:\.0+)?\s*(?:;|$|!)"
    r"|font-size\s*:\s*(?:0+(?:\.\d+)?|0?\.\d+|1)\s*(?:px|pt|em|rem|%)?\s*(?:;|$|!)"
    r"|max-(?:height|width)\s*:\s*0+(?:px)?\s*(?:;|$|!)", re.I)
#: Characters that take no room on screen; inside a word they split it for a filter but not for the reader.
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)
#: Elements that have no end tag (and so no content).
VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "param", "source",
                  "track", "wbr"})
BLOCK = frozenset({"p", "div", "br", "tr", "td", "th", "li", "table", "h1", "h2", "h3", "h4", "h5", "h6", "section",
                   "article", "header", "footer", "ul", "ol", "blockquote", "hr", "form"})
SKIP = frozenset({"style", "head", "title", "noscript", "template"})
_PASSWORD_IN_SCRIPT = re.compile(
    r"""type\s*[=:]\s*\\?["']?password|\.type\s*=\s*["']password|setAttribute\(\s*["']type["']\s*,\s*["']password""",
    re.I)
_LOCATION_IN_SCRIPT = re.compile(
    r"""(?:window\.|document\.|top\.|self\.)?location(?:\.href)?\s*=\s*["'](https?://[^"'\s]+)"""
    r"""|location\.(?:replace|assign)\(\s*["'](https?://[^"'\s]+)""", re.I)
_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\"\s;]+)", re.I)
_BASE64_LITERAL = re.compile(r"""["']([A-Za-z0-9+/]{""" + str(MIN_BLOB_CHARS) + r""",}={0,2})["']""")
_URL_TEXT = re.compile(r"^(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,})(?:[/:?#]\S*)?$",
                       re.I)


@dataclass
class HtmlFacts:
    """What one HTML document contains, for the phishing check to judge."""

    #: Password fields in the markup, and ones a script creates.
    password_fields: int = 0
    script_password: bool = False
    #: The ``action`` of each form (empty: posts to itself), and whether the form has a password field.
    forms: list[tuple[str, bool]] = field(default_factory=list)
    #: (href, the text the reader sees) of each link.
    links: list[tuple[str, str]] = field(default_factory=list)
    #: Web addresses the page sends the browser to by itself (meta refresh, ``location = ...``).
    redirects: list[str] = field(default_factory=list)
    #: The text the reader sees (hidden elements and zero-width characters removed) and what a filter reads.
    visible_text: str = ""
    raw_text: str = ""
    #: A page found inside (base64 in a script) was analysed too.
    decoded_inner: bool = False

    def hidden_splits(self, words: set[str]) -> list[str]:
        """Words of ``words`` the reader sees that the raw text does not contain as often: hidden text or zero-width
        characters split them (text salting)."""
        seen = _squash(self.visible_text)
        raw = _squash(self.raw_text, keep_zero_width=True)
        return sorted(w for w in words if seen.count(w) > raw.count(w))


def _squash(text: str, *, keep_zero_width: bool = False) -> str:
    text = text.lower() if keep_zero_width else text.lower().translate(ZERO_WIDTH)
    return " ".join(text.split())


def close_element(stack: list[Any], tag: str) -> None:
    """End ``tag`` on a parser's stack of open elements (``(tag, ...)`` tuples above a root entry that stays): close
    up to the innermost open ``tag`` and the elements left open inside it; ignore a stray end tag."""
    for i in range(len(stack) - 1, 0, -1):
        if stack[i][0] == tag:
            del stack[i:]
            break


class _Parser(HTMLParser):
    def __init__(self, facts: HtmlFacts) -> None:
        super().__init__(convert_charrefs=True)
        self.facts = facts
        #: (tag, hidden) of each open element.
        self.stack: list[tuple[str, bool]] = [("", False)]
        self.visible: list[str] = []
        self.raw: list[str] = []
        self.scripts: list[str] = []
        self._skip = 0
        self._script = False
        self._link: tuple[str, list[str]] | None = None
        self._form: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        f = self.facts
        if tag in BLOCK:
            self.visible.append("\n")
            self.raw.append("\n")
        if tag == "script":
            self._script = True
        elif tag in SKIP:
            self._skip += 1
        elif tag == "a" and len(f.links) < MAX_ITEMS:
            self._link = (a.get("href", "").strip(), [])
        elif tag == "form" and len(f.forms) < MAX_ITEMS:
            f.forms.append((a.get("action", "").strip(), False))
            self._form = len(f.forms) - 1
        elif tag == "input" and a.get("type", "").strip().lower() == "password":
            f.password_fields += 1
            if self._form is not None:
                f.forms[self._form] = (f.forms[self._form][0], True)
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            found = _REFRESH_URL.search(a.get("content", ""))
            if found and found.group(1).lower().startswith(("http://", "https://")):
                f.redirects.append(found.group(1))
        if tag in VOID:
            return
        hidden = self.stack[-1][1] or bool(HIDING.search(a.get("style", ""))) or "hidden" in a \
            or (tag == "font" and a.get("size", "").strip() == "0")
        self.stack.append((tag, hidden))

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCK:
            self.visible.append("\n")
            self.raw.append("\n")
        if tag == "script":
            self._script = False
        elif tag in SKIP and self._skip:
            self._skip -= 1
        elif tag == "a" and self._link is not None:
            self.facts.links.append((self._link[0], " ".join("".join(self._link[1]).split())))
            self._link = None
        elif tag == "form":
            self._form = None
        close_element(self.stack, tag)

    def handle_data(self, data: str) -> None:
        if self._script:
            self.scripts.append(data)
            return
        if self._skip:
            return
        self.raw.append(data)
        if not self.stack[-1][1]:
            self.visible.append(data)
            if self._link is not None:
                self._link[1].append(data.translate(ZERO_WIDTH))


def analyse_html(markup: str, *, decode_inner: bool = True) -> HtmlFacts:
    """The facts of one HTML document; never raises on bad markup (the parser is lenient, the rest is kept)."""
    facts = HtmlFacts()
    parser = _Parser(facts)
    text = markup[:MAX_HTML_CHARS]
    try:
        parser.feed(text)
        parser.close()
    except (AssertionError, ValueError, IndexError):  # html.parser's rare internal errors on broken markup
        pass
    facts.visible_text = "".join(parser.visible)
    facts.raw_text = "".join(parser.raw)
    script = "\n".join(parser.scripts)
    if "unescape(" in script or "decodeURIComponent(" in script:
        script += "\n" + unquote(script)
    facts.script_password = bool(_PASSWORD_IN_SCRIPT.search(script))
    for found in _LOCATION_IN_SCRIPT.finditer(script):
        if len(facts.redirects) < MAX_ITEMS:
            facts.redirects.append(found.group(1) or found.group(2))
    if decode_inner:
        for blob in _BASE64_LITERAL.findall(script)[:MAX_DECODED_BLOBS]:
            inner = _decode_base64(blob)
            if inner is None or "<" not in inner:
                continue
            sub = analyse_html(inner, decode_inner=False)
            facts.decoded_inner = True
            facts.password_fields += sub.password_fields
            facts.script_password = facts.script_password or sub.script_password
            facts.forms.extend(sub.forms[:MAX_ITEMS])
            facts.redirects.extend(sub.redirects[:MAX_ITEMS])
    return facts


def _decode_base64(blob: str) -> str | None:
    try:
        return base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def shown_domain(text: str) -> str:
    """The host a link's text shows when it is a web address (``www.paypal.com/signin`` → ``www.paypal.com``),
    else ""."""
    found = _URL_TEXT.match(text.strip())
    return found.group(1).lower() if found else ""
