"""A safe look into a stored mail for the quarantine: headers, attachments with their real types, and a preview.

The HTML of a quarantined mail is hostile by assumption. :func:`sanitize_html` keeps layout only: no scripts, no
event handlers, no forms, frames, objects or SVG, no ``style`` (tags or attributes: CSS can load URLs), no meta or
base. Images never load (each becomes a placeholder naming what was blocked), and links are not clickable: each
becomes a ``<span class="mw-link">`` whose ``title`` shows the target, so a person can inspect a phishing link
without following it. Pages that show the result should still send a strict Content-Security-Policy
(``default-src 'none'; style-src 'self'``) or put it in a sandboxed iframe: defence in depth.

Parsing uses only the standard library (``tenants.mail.mimetext``, shared with ``smtp.mime``; ``tenants`` imports
nothing
of ``smtp``) and never raises on bad input. A mail over the MIME limits (:mod:`tenants.mail.mimescan`, the same the
ingress
applies: only mail stored before them, or by a path that skips DATA, can be) is not parsed at all, and one whose parse
runs out of its budget is not shown either: the view says "not rendered" and why.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit

import magic
import nh3

from tenants.mail.mimescan import LIMITS, Budget, MimeLimitExceeded, scan
from tenants.mail.mimetext import header_items, one_line, parse_message, split_parts

#: Characters of text (or of sanitised HTML) a preview shows at most.
MAX_PREVIEW_CHARS = 200_000
#: MIME parts looked at (a mail with more is over the limits and not rendered at all).
MAX_PARTS = LIMITS.max_parts
#: What the preview says instead of the content of a mail over the MIME limits.
NOT_RENDERED = "Not rendered: the MIME structure of this message is over the limits ({why})."
#: Bytes given to libmagic to find an attachment's real type.
SNIFF_BYTES = 1024 * 1024
#: Longest header value shown.
MAX_HEADER_VALUE = 4000

#: Tags kept (their text is kept for any other tag, except those in _DROP_WITH_CONTENT).
_TAGS = {
    "a", "abbr", "b", "big", "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del",
    "dfn", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
    "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody",
    "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var", "wbr",
}
#: Tags removed together with everything inside them.
_DROP_WITH_CONTENT = {
    "script", "style", "title", "noscript", "template", "iframe", "frame", "frameset", "object", "embed", "applet",
    "svg", "math", "textarea", "select", "option", "button", "xmp", "noembed", "noframes", "head", "audio", "video",
}
_LAYOUT = {"align", "valign", "width", "height", "bgcolor"}
_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"title", "dir", "lang"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "font": {"color", "face", "size"},
    "table": _LAYOUT | {"border", "cellpadding", "cellspacing", "summary"},
    "td": _LAYOUT | {"colspan", "rowspan", "nowrap"},
    "th": _LAYOUT | {"colspan", "rowspan", "nowrap", "scope"},
    "tr": _LAYOUT,
    "col": {"span", "width", "align", "valign"},
    "colgroup": {"span", "width", "align", "valign"},
    "p": {"align"},
    "div": {"align"},
    "hr": {"width", "size", "align"},
    "ol": {"start", "type"},
    "ul": {"type"},
    "li": {"value"},
}
#: Link targets kept (for display only); others (javascript:, data:, vbscript:, file:...) are dropped.
_URL_SCHEMES = {"http", "https", "mailto"}
#: Values of layout attributes kept: colours, sizes, plain words; nothing with a URL, parenthesis or quote.
_SAFE_VALUE = re.compile(r"^[#\w .,%-]{0,100}$")


class _Rewriter(HTMLParser):
    """Second pass over nh3's (well-formed) output: links become inert spans, images become placeholders, and every
    attribute value is re-checked and re-escaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            return  # nh3 let no other tag through; should one ever come, it is dropped here too
        values = {k: v or "" for k, v in attrs}
        if tag == "a":
            target = values.get("href", "")
            title = f' title="{html.escape(target)}"' if target else ""
            self.out.append(f'<span class="mw-link"{title}>')
            return
        if tag == "img":
            self.out.append(_image_placeholder(values.get("src", ""), values.get("alt", "")))
            return
        kept = "".join(f' {k}="{html.escape(v)}"' for k, v in values.items()
                       if k in ("title", "dir", "lang") or _SAFE_VALUE.match(v))
        self.out.append(f"<{tag}{kept}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "img" or tag not in _TAGS:
            return
        self.out.append("</span>" if tag == "a" else f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.out.append(html.escape(data, quote=False))


def _image_placeholder(src: str, alt: str) -> str:
    if src.startswith(("http:", "https:")):
        what = f"remote image from {urlsplit(src).hostname or 'unknown host'} blocked"
    else:
        what = "embedded image not shown"
    label = f"[image: {alt}]" if alt else "[image]"
    return f'<span class="mw-img-blocked" title="{html.escape(what)}">{html.escape(label, quote=False)}</span>'


def sanitize_html(markup: str) -> str:
    """HTML safe to show in a page of ours: layout and text only, inert links, no images (see the module text)."""
    cleaned = nh3.clean(
        markup[:MAX_PREVIEW_CHARS * 2],
        tags=_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        strip_comments=True,
        link_rel=None,
    )
    rewriter = _Rewriter()
    rewriter.feed(cleaned)
    rewriter.close()
    return "".join(rewriter.out)[:MAX_PREVIEW_CHARS]


# --- a stored mail, looked at -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttachmentInfo:
    """An attachment as listed: the name the sender gave, the type it declared, the type it really is, its size."""

    filename: str | None
    declared_type: str
    real_type: str
    size: int


@dataclass(frozen=True)
class Preview:
    """``kind`` says what to show by default: ``text`` (the text part), ``html`` (only HTML was sent), ``empty``, or
    ``not_rendered`` (over the MIME limits: ``text`` says why).

    ``text`` is plain text (escape it when rendering); ``html`` is already sanitised (mark it safe), "" if none.
    """

    kind: str
    text: str
    html: str


@dataclass
class MailView:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html: str = ""
    attachments: list[AttachmentInfo] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    #: Which MIME limit the mail passes; then nothing of it is shown.
    over_limits: str | None = None

    @property
    def preview(self) -> Preview:
        if self.over_limits is not None:
            return Preview("not_rendered", NOT_RENDERED.format(why=self.over_limits), "")
        safe_html = sanitize_html(self.html) if self.html else ""
        if self.text.strip():
            return Preview("text", self.text[:MAX_PREVIEW_CHARS], safe_html)
        if self.html:
            return Preview("html", _visible_text(safe_html), safe_html)
        return Preview("empty", "", "")


def _visible_text(safe_html: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", safe_html)).strip()[:MAX_PREVIEW_CHARS]


def real_type(data: bytes) -> str:
    """The MIME type of ``data`` by its content (libmagic); ``application/octet-stream`` when it cannot tell."""
    try:
        return str(magic.from_buffer(data[:SNIFF_BYTES], mime=True)).lower()
    except Exception:  # libmagic errors on odd input: unknown type
        return "application/octet-stream"


def _not_rendered(why: str) -> MailView:
    return MailView(defects=[f"not rendered: over the MIME limits ({why})"], over_limits=why)


def parse_view(raw: bytes) -> MailView:
    """Headers, body text and HTML, and attachments of a raw mail; problems become ``defects``, never exceptions.
    A mail over the MIME limits is not parsed (or, should its parse run out of budget, not shown): see the module."""
    over = scan(raw).over
    if over is not None:
        return _not_rendered(over)
    view = MailView()
    budget = Budget(LIMITS)
    try:
        msg = parse_message(raw, budget)
        fields = header_items(msg, budget)
    except MimeLimitExceeded as exc:
        return _not_rendered(str(exc))
    except Exception as exc:
        view.defects.append(f"unparseable: {type(exc).__name__}")
        return view
    for name, parsed in fields:
        try:
            value = one_line(parsed) if parsed is not None else "(undecodable)"
        except Exception:
            value = "(undecodable)"
        view.headers.append((name, value[:MAX_HEADER_VALUE]))
    parts = split_parts(msg, max_parts=MAX_PARTS, budget=budget)
    if parts.over_limits is not None:
        return _not_rendered(parts.over_limits)
    view.defects.extend(parts.defects)
    if parts.truncated:
        view.defects.append(f"more than {MAX_PARTS} MIME parts: the rest is not listed")
    view.attachments = [AttachmentInfo(leaf.filename, leaf.content_type, real_type(leaf.data), len(leaf.data))
                        for leaf in parts.leaves]
    view.text = "\n".join(parts.texts)
    view.html = "\n".join(parts.htmls)
    return view
