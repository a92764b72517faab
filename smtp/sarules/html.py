"""An HTML part rendered the way SpamAssassin's ``HTML.pm`` renders it: the text (visible and invisible), and the
facts its HTML evals test (``html_test``, ``html_range``, ``html_tag_exists``, ``html_text_match``...).

A port of the parts of ``Mail::SpamAssassin::HTML`` the shipped rules read, on the standard library's
:class:`html.parser.HTMLParser`: tag and element counts, tags left open or closed twice, text style (colour, size,
``display:none``) for invisible text, anchors, titles, comments, image area, meta charsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

#: Tags SpamAssassin knows as HTML elements (anything else counts as a bad tag).
ELEMENTS = frozenset((
    "a abbr acronym address area b base bdo big blockquote body br button caption cite code col colgroup dd del dfn "
    "div dl dt em fieldset form h1 h2 h3 h4 h5 h6 head hr html i img input ins kbd label legend li link map meta "
    "noscript object ol optgroup option p param pre q samp script select small span strong style sub sup table tbody "
    "td textarea tfoot th thead title tr tt ul var applet basefont center dir font frame frameset iframe isindex menu "
    "noframes s strike u nobr x-sigsep x-tab").split())
TRICKS = frozenset("bgsound embed listing plaintext xmp".split())
TEXT_STYLE = frozenset("body font table tr th td big small basefont marquee span p div a".split())
OK_ATTRIBUTES = {"basefont": {"color", "face", "size"}, "body": {"text", "bgcolor", "link", "alink", "vlink",
                 "background"}, "font": {"color", "face", "size"}, "marquee": {"bgcolor", "background"},
                 "table": {"bgcolor", "style"}, "td": {"bgcolor", "style"}, "th": {"bgcolor", "style"},
                 "tr": {"bgcolor", "style"}, "span": {"style"}, "p": {"style"}, "div": {"style"},
                 "a": {"style"}}
#: Named colours SpamAssassin knows (the CSS basic set; others fall back to "invalid" unless hex).
COLOURS = {"aqua": "#00ffff", "black": "#000000", "blue": "#0000ff", "fuchsia": "#ff00ff", "gray": "#808080",
           "grey": "#808080", "green": "#008000", "lime": "#00ff00", "maroon": "#800000", "navy": "#000080",
           "olive": "#808000", "purple": "#800080", "red": "#ff0000", "silver": "#c0c0c0", "teal": "#008080",
           "white": "#ffffff", "yellow": "#ffff00", "orange": "#ffa500", "transparent": "transparent"}
_BREAK = frozenset({"br", "div"})
_SPACE = re.compile(r"^(?:li|t[hd]|d[td]|embed|h\d)$")
_PARAGRAPH = frozenset("p hr blockquote pre listing plaintext xmp title".split())
_FONT_FACE_OK = re.compile(r"""^\s*["'.]?[a-z ][a-z -]*[a-z]\d?["']?(?:,\s*["']?[a-z][a-z -]*[a-z]\d?["']?)*;?$""",
                           re.I)
_WORD_END = re.compile(r"[^\s\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]\Z")
_WORD_START = re.compile(r"^[^\s\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]")
_WS = re.compile(r"[ \t\n\r\f\x0b\xa0]+")
#: Base font size of an HTML document (SpamAssassin's basefont).
BASE_FONT = 3


def colour(value: str) -> str:
    """A colour attribute as ``#rrggbb``, ``transparent`` or ``invalid`` (SpamAssassin's name_to_rgb)."""
    v = value.strip().lower()
    if v in COLOURS:
        return COLOURS[v]
    m = re.match(r"^#?([0-9a-f]{6})$", v) or re.match(r"^#?([0-9a-f]{3})$", v)
    if m:
        h = m.group(1)
        return "#" + (h if len(h) == 6 else "".join(c * 2 for c in h))
    m = re.match(r"^rgb\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", v)
    if m:
        return "#" + "".join(f"{min(int(x), 255):02x}" for x in m.groups())
    return "invalid"


@dataclass
class HtmlFacts:
    """What the HTML parts of a mail do (accumulated over every HTML part, as SpamAssassin's html metadata is)."""

    #: Rendered text chunks and whether each is invisible.
    chunks: list[tuple[str, bool]] = field(default_factory=list)
    tests: set[str] = field(default_factory=set)
    inside: dict[str, int] = field(default_factory=dict)
    tags: int = 0
    elements: int = 0
    tags_seen: int = 0
    elements_seen: int = 0
    closed_extra: int = 0
    obfuscation: int = 0
    length: int = 0
    image_area: int = 0
    max_size: int = BASE_FONT
    min_size: int = BASE_FONT
    anchors: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    uris: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    images: int = 0

    def text(self, invisible: bool | None = None) -> str:
        return "".join(t for t, inv in self.chunks if invisible is None or inv == invisible)

    def result(self, name: str) -> Any:
        """A numeric result by SpamAssassin's name (html_range / html_eval)."""
        ratios = {
            "bad_tag_ratio": (self.tags - self.elements) / self.tags if self.tags else None,
            "non_element_ratio": (self.tags_seen - self.elements_seen) / self.tags_seen if self.tags_seen else None,
            "closed_extra_ratio": self.closed_extra / self.tags if self.tags else None,
            "obfuscation_ratio": self.obfuscation / self.tags if self.tags else None,
            "length": self.length, "image_area": self.image_area, "max_size": self.max_size,
            "min_size": self.min_size,
        }
        return ratios.get(name)

    def texts(self, name: str) -> list[str]:
        """A text-list result (html_text_match): comment, title, anchor, script."""
        return {"comment": self.comments, "title": self.titles, "anchor": self.anchors,
                "script": self.scripts}.get(name, [])


class _Renderer(HTMLParser):
    def __init__(self, facts: HtmlFacts) -> None:
        super().__init__(convert_charrefs=True)
        self.f = facts
        self.style: list[dict[str, Any]] = [{"tag": "default", "fg": "#000000", "bg": "#ffffff", "size": BASE_FONT}]
        self.basefont = BASE_FONT
        self.last_whitespace = False
        self.in_title = False

    # --- tags --------------------------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, {k.lower(): (v or "") for k, v in attrs}, 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, {k.lower(): (v or "") for k, v in attrs}, 1)

    def handle_endtag(self, tag: str) -> None:
        self._tag(tag, {}, -1)

    def _tag(self, tag: str, attr: dict[str, str], num: int) -> None:
        f = self.f
        if tag in ELEMENTS:
            f.elements += 1
            if tag not in f.inside:
                f.elements_seen += 1
        f.tags += 1
        if tag not in f.inside:
            f.tags_seen += 1
        f.inside[tag] = f.inside.get(tag, 0) + num
        if f.inside[tag] < 0:
            f.inside[tag] = 0
            f.closed_extra += 1
        if tag not in ELEMENTS and tag not in TRICKS:
            return
        if tag in TEXT_STYLE:
            self._text_style(tag, attr, num)
        if tag in _BREAK:
            self._display("\n", whitespace=True)
        elif _SPACE.match(tag):
            self._display(" ", whitespace=True)
        elif tag in _PARAGRAPH:
            self._display("\n\n", whitespace=True)
        if num == 1:
            self._uri(tag, attr)
            self._tests(tag, attr)

    def _uri(self, tag: str, attr: dict[str, str]) -> None:
        key = {"a": "href", "area": "href", "link": "href", "base": "href", "img": "src", "frame": "src",
               "iframe": "src", "embed": "src", "script": "src", "bgsound": "src", "form": "action",
               "body": "background", "table": "background", "tr": "background", "td": "background"}.get(tag)
        if key and attr.get(key, "").strip():
            self.f.uris.append(attr[key].strip())
        if tag == "a" and attr.get("data-saferedirecturl"):
            self.f.uris.append(attr["data-saferedirecturl"].strip())
        if tag == "meta" and "refresh" in attr.get("http-equiv", "").lower():
            m = re.search(r"\burl\s*=\s*([^;]+)", attr.get("content", ""), re.I)
            if m:
                self.f.uris.append(m.group(1).strip())

    def _tests(self, tag: str, attr: dict[str, str]) -> None:
        f = self.f
        if tag == "font" and "face" in attr and not _FONT_FACE_OK.match(attr["face"]):
            f.tests.add("font_face_bad")
        if tag == "img":
            f.images += 1
            if f.inside.get("a", 0) > 0 and f.anchors:
                f.anchors[-1] += "<img>\n"
            if "width" in attr and "height" in attr:
                f.image_area += _dimension(attr["width"], 8) * _dimension(attr["height"], 6)
        if tag == "form" and "mailto:" in attr.get("action", "").lower():
            f.tests.add("form_action_mailto")
        if tag in ("object", "embed"):
            f.tests.add("embeds")
        if tag == "a":
            f.anchors.append("")
        if tag == "title":
            f.titles.append("")
        if tag == "meta" and "content-type" in attr.get("http-equiv", "").lower():
            m = re.search(r"""\bcharset\s*=\s*["']?([^"']+)""", attr.get("content", ""), re.I)
            if m:
                f.charsets.append(m.group(1).strip())

    def _text_style(self, tag: str, attr: dict[str, str], num: int) -> None:
        tag = "td" if tag == "th" else tag
        if num != 1:
            if tag != "body" and any(s["tag"] == tag for s in self.style[1:]):
                while len(self.style) > 1 and self.style.pop()["tag"] != tag:
                    pass
            return
        if tag == "basefont":
            m = re.match(r"^\s*(\d+)", attr.get("size", ""))
            if m:
                self.basefont = int(m.group(1))
            return
        new = dict(self.style[-1], tag=tag)
        if tag in ("big", "small"):
            new["size"] += 1 if tag == "big" else -1
        for name, value in attr.items():
            if name not in OK_ATTRIBUTES.get(tag, ()):
                continue
            if name in ("text", "color"):
                new["fg"] = colour(value)
            elif name == "size":
                m = re.match(r"^\s*([+-]?)(\d+)", value)
                if m:
                    new["size"] = self.basefont + int(m.group(1) + m.group(2)) if m.group(1) else int(m.group(2))
            elif name == "style":
                self._css(new, value)
            elif name == "bgcolor":
                new["bg"] = colour(value)
            self.f.max_size = max(self.f.max_size, new["size"])
            self.f.min_size = min(self.f.min_size, new["size"])
        self.style.append(new)

    def _css(self, new: dict[str, Any], style: str) -> None:
        for part in style.split(";"):
            m = re.match(r"^\s*(background-)?color:\s*(.+?)\s*$", part, re.I)
            if m:
                value = re.sub(r"\s*!\s*important$", "", m.group(2).lower())
                if value != "inherit":
                    new["bg" if m.group(1) else "fg"] = colour(value)
                continue
            m = re.match(r"^\s*([a-z_-]+)\s*:\s*(\S.*?)\s*$", part, re.I)
            if m:
                new["style_" + m.group(1).lower()] = m.group(2)
        if new["bg"] == "transparent":
            new["bg"] = self.style[-1]["bg"]
        if new["fg"] == "transparent":
            new["fg"] = new["bg"]

    # --- text -------------------------------------------------------------------------------------------------
    def handle_data(self, data: str) -> None:
        f = self.f
        if f.inside.get("script", 0) > 0:
            f.scripts.append(data)
            return
        if f.inside.get("style", 0) > 0:
            return
        if f.inside.get("a", 0) > 0 and f.anchors:
            f.anchors[-1] += data
        if f.inside.get("title", 0) > 0 and f.titles:
            f.titles[-1] += data
        invisible = bool(_WS.sub("", data)) and self._invisible()
        if f.chunks and _WORD_START.match(data) and _WORD_END.search(f.chunks[-1][0]):
            f.obfuscation += 1
        self._display(data, invisible=invisible)

    def handle_comment(self, data: str) -> None:
        self.f.comments.append(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        if decl.lower().startswith("doctype"):
            self.f.elements += 1
            self.f.tags += 1

    def _invisible(self) -> bool:
        s = self.style[-1]
        fg, bg = s["fg"], s["bg"]
        if fg[-6:] == bg[-6:]:
            self.f.tests.add("font_low_contrast")
            return True
        if len(fg) == 7 and len(bg) == 7 and fg.startswith("#") and bg.startswith("#"):
            d = [int(fg[i:i + 2], 16) - int(bg[i:i + 2], 16) for i in (1, 3, 5)]
            if ((0.2126 * d[0]) ** 2 + (0.7152 * d[1]) ** 2 + (0.0722 * d[2]) ** 2) ** 0.5 < 12:
                self.f.tests.add("font_low_contrast")
                return True
        if fg == "invalid" or bg == "invalid":
            self.f.tests.add("font_invalid_color")
            return True
        return bool(s["size"] <= 1 or str(s.get("style_display", "")).lower() == "none"
                    or str(s.get("style_visibility", "")).lower() == "hidden")

    def _display(self, text: str, *, whitespace: bool = False, invisible: bool = False) -> None:
        chunks = self.f.chunks
        if whitespace:
            if chunks and not self.last_whitespace and not chunks[-1][1] and chunks[-1][0].endswith(" "):
                chunks[-1] = (chunks[-1][0][:-1], False)
        else:
            text = _WS.sub(" ", text)
            if chunks and not invisible and self.last_whitespace:
                text = text.lstrip(" ")
        chunks.append((text, invisible))
        self.last_whitespace = whitespace


def _dimension(value: str, percent_factor: int) -> int:
    m = re.match(r"^(\d+)(%)?$", value.strip())
    n = int(m.group(1)) * (percent_factor if m.group(2) else 1) if m else 0
    return n if n > 0 else 200


def render(html: str, facts: HtmlFacts | None = None) -> HtmlFacts:
    """Render one HTML part into ``facts`` (a new one when None); never raises on bad markup."""
    facts = facts if facts is not None else HtmlFacts()
    facts.tests.add("html")
    facts.length += len(html.encode("utf-8", "replace"))
    text = re.sub(r"<(\w+)\s*/>", r"<\1>", html.replace("&nbsp;", " "))
    parser = _Renderer(facts)
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # HTMLParser is lenient; what was read before a failure still counts
        pass
    return facts
