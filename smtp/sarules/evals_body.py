"""SpamAssassin's body, MIME, HTML and image ``eval:`` tests (BodyEval, MIMEEval, HTMLEval, ImageInfo)."""

from __future__ import annotations

import re
import struct
from email.message import Message
from typing import Any

from smtp.sarules.evalbase import EvalEnv, in_range, num, register
from smtp.sarules.message import SaMessage

#: Charsets whose text is upper case to a Latin reader (SpamAssassin's CHARSETS_LIKELY_TO_FP_AS_CAPS).
_CAPS_FP_CHARSET = re.compile(r"^(?:iso-2022-jp|euc-jp|shift_jis|ks_c_5601|euc-kr|big5|gb2312|gbk|gb18030|"
                              r"koi8-r|windows-1251|iso-8859-5|utf-8|iso-2022-kr)", re.I)
_QP_ENCODED = re.compile(r"=(?:09|3[0-9ABCEF]|[2456][0-9A-F]|7[0-9A-E])")
_ASCII_CHARSETS = re.compile(r"(?:us-ascii|ansi_x3\.4-1968|iso-ir-6|ansi_x3\.4-1986|iso_646\.irv:1991|ascii|"
                             r"iso646-us|us|ibm367|cp367|csascii)")


def _cached(msg: SaMessage, key: str, compute: Any) -> Any:
    if key not in msg.cache:
        msg.cache[key] = compute(msg)
    return msg.cache[key]


# --- MIME ---------------------------------------------------------------------------------------------------------

# Complexity (C901) by design: SpamAssassin's MIME counters, one branch each.
def _mime_stats(msg: SaMessage) -> dict[str, Any]:  # noqa: C901
    """SpamAssassin's MIMEEval ``_check_attachments`` facts over every part of the mail."""
    st: dict[str, Any] = {"mime_base64_count": 0, "mime_base64_encoded_text": 0, "mime_body_html_count": 0,
                          "mime_body_text_count": 0, "mime_faraway_charset": 0, "mime_missing_boundary": 0,
                          "mime_multipart_alternative": 0, "mime_multipart_ratio": 1.0, "mime_qp_count": 0,
                          "mime_qp_long_line": 0, "mime_attachment": 0, "mime_bad_iso_charset": 0,
                          "mime_base64_blanks": 0, "mime_text_unicode_ratio": 0.0, "mimepart_limit_exceeded": 0}
    root = msg.message
    if root is None:
        return st
    qp_bytes = qp_encoded = normal = unicode = 0
    alt_text: int | None = None
    alt_html: int | None = None
    for n, part in enumerate(root.walk()):
        if "mimepart_limit_exceeded" in msg.parse_flags or n > 500:
            st["mimepart_limit_exceeded"] = 1
            break
        ctype = part.get_content_type()
        charset = (part.get_content_charset() or "").lower()
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        cd = str(part.get("Content-Disposition", "")).strip().lower()
        if ctype == "multipart/alternative":
            st["mime_multipart_alternative"] = 1
        if ctype == "text/html":
            st["mime_body_html_count"] += 1
        elif ctype.startswith("text"):
            st["mime_body_text_count"] += 1
        if "base64" in cte:
            st["mime_base64_count"] += 1
        elif "quoted-printable" in cte:
            st["mime_qp_count"] += 1
        if "attachment" in cd:
            st["mime_attachment"] += 1
        if ctype.startswith("text") and "base64" in cte and (not charset or _ASCII_CHARSETS.search(charset)) \
                and not re.match(r"^(?:attachment|inline)", cd):
            st["mime_base64_encoded_text"] = 1
        if re.search(r"iso-\S+-\S+\b", charset) and not re.search(r"iso-(?:8859-\d{1,2}|2022-(?:jp|kr))\b", charset):
            st["mime_bad_iso_charset"] = 1
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=False)
        lines = payload.split("\n") if isinstance(payload, str) else []
        length = sum(len(line) + 1 for line in lines)
        if "attachment" not in cd and st["mime_multipart_alternative"] and ctype in ("text/plain", "text/html"):
            if ctype == "text/html":
                alt_html = length
            else:
                alt_text = length
        if cte == "quoted-printable":
            for line in lines:
                if len(line) > 79:
                    st["mime_qp_long_line"] = 1
                qp_bytes += len(line) + 1
                if "=" in line:
                    qp_encoded += len(_QP_ENCODED.findall(line))
        if cte == "base64" and any(not line.strip() for line in lines[:-1]) and \
                any(line.strip() for line in lines[lines.index(""):] if "" in lines):
            st["mime_base64_blanks"] = 1
        if ctype == "text/plain" and cte in ("", "7bit", "8bit"):
            for line in lines:
                subs = len(re.findall(r"&#x[0-9A-F]{4};", line))
                normal += len(line) - 8 * subs
                unicode += subs
    if normal:
        st["mime_text_unicode_ratio"] = unicode / normal
    if st["mime_multipart_alternative"] and alt_text is not None and alt_html:
        st["mime_multipart_ratio"] = alt_text / alt_html
    return st


@register("check_for_mime")
def check_for_mime(msg: SaMessage, env: EvalEnv, test: str) -> bool:
    return bool(_cached(msg, "mime", _mime_stats).get(test))


def _top_is_html(msg: SaMessage) -> bool:
    return msg.first("Content-Type").lower().startswith("text/html")


@register("check_for_mime_html")
def check_for_mime_html(msg: SaMessage, env: EvalEnv) -> bool:
    return _top_is_html(msg) or _cached(msg, "mime", _mime_stats)["mime_body_html_count"] > 0


@register("check_for_mime_html_only")
def check_for_mime_html_only(msg: SaMessage, env: EvalEnv) -> bool:
    st = _cached(msg, "mime", _mime_stats)
    return _top_is_html(msg) or (st["mime_body_html_count"] > 0 and st["mime_body_text_count"] == 0)


@register("check_mime_multipart_ratio")
def check_mime_multipart_ratio(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    ratio = _cached(msg, "mime", _mime_stats)["mime_multipart_ratio"]
    return float(low) <= ratio < float(high)


@register("check_abundant_unicode_ratio")
def check_abundant_unicode_ratio(msg: SaMessage, env: EvalEnv, ratio: str) -> bool:
    return _cached(msg, "mime", _mime_stats)["mime_text_unicode_ratio"] >= float(ratio)


@register("check_ma_non_text")
def check_ma_non_text(msg: SaMessage, env: EvalEnv) -> bool:
    root = msg.message
    if root is None:
        return False
    for part in root.walk():
        if part.get_content_type() != "multipart/alternative":
            continue
        children = part.get_payload()
        for child in children if isinstance(children, list) else []:
            if isinstance(child, Message) and child.get_content_type() not in ("multipart/related", "application/rtf") \
                    and not child.get_content_maintype() == "text":
                return True
    return False


@register("check_base64_length")
def check_base64_length(msg: SaMessage, env: EvalEnv, low: str, high: str | None = None) -> bool:
    def longest(m: SaMessage) -> int:
        return max((len(line.rstrip("\r")) for p in m.parts if p.encoding == "base64" and p.ctype != "application/ics"
                    for line in p.encoded.split("\n")), default=0)
    length = _cached(msg, "b64len", longest)
    if high is not None and length > float(high):
        return False
    return length >= float(low)


@register("check_body_length")
def check_body_length(msg: SaMessage, env: EvalEnv, limit: str) -> bool:
    block = msg.header_block
    return len(msg.raw) - len(block) - 1 <= float(limit)


@register("check_for_uppercase")
def check_for_uppercase(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    def percent(m: SaMessage) -> float:
        charsets = [p.charset for p in m.parts if p.text is not None and p.charset]
        if any(_CAPS_FP_CHARSET.match(c) for c in charsets):
            return 0.0
        length = lower = upper = 0
        for line in m.body_nosubject.split(b"\n"):
            if not re.search(rb"\S\s+\S", line) or re.match(rb"^(?:[A-Za-z0-9+/=]{60,76} ){2}", line):
                continue
            length += len(line)
            lower += len(re.findall(rb"[a-z0-9]", line))
            upper += len(re.findall(rb"[A-Z]", line))
        if length < 200 or upper + lower == 0:
            return 0.0
        return upper / (upper + lower) * 100
    value = _cached(msg, "uppercase", percent)
    return float(low) < value <= float(high)


def _madiff(msg: SaMessage) -> tuple[float, int, int]:
    """(difference %, html words, text words) of the multipart/alternative parts (BodyEval)."""
    root = msg.message
    best, html_n, text_n = 0.0, 0, 0
    if root is None:
        return best, html_n, text_n
    for part in root.walk():
        if part.get_content_type() != "multipart/alternative":
            continue
        html: dict[str, int] = {}
        text: dict[str, int] = {}
        for child in part.walk():
            if child.get_content_maintype() != "text" or child.is_multipart():
                continue
            leaf = SaMessage._leaf(child)
            if leaf.text is None:
                continue
            target = html if leaf.ctype == "text/html" else text
            for word in leaf.text.split():
                if re.search(r"\w", word):
                    target[word] = target.get(word, 0) + 1
            if leaf.html is not None and not html and leaf.html.images:
                html["\n"] = 1
        if not html:
            continue
        html_n, text_n = len(html), len(text)
        remaining = [w for w, c in html.items() if not (w in text and c - text[w] < 1)]
        best = max(best, len(remaining) / len(html) * 100)
    return best, html_n, text_n


@register("multipart_alternative_difference")
def multipart_alternative_difference(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    diff = _cached(msg, "madiff", _madiff)[0]
    return (float(low) == 0 or diff > float(low)) and (high == "undef" or diff <= float(high))


@register("multipart_alternative_difference_count")
def multipart_alternative_difference_count(msg: SaMessage, env: EvalEnv, ratio: str, minhtml: str) -> bool:
    _, html_n, text_n = _cached(msg, "madiff", _madiff)
    return html_n > float(minhtml) and text_n / html_n > float(ratio)


@register("tvd_vertical_words")
def tvd_vertical_words(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    def value(m: SaMessage) -> int:
        best = -1
        for line in m.body.split(b"\n"):
            if len(line) <= 5:
                continue
            spaces = line.count(b" ")
            nonspaces = len(line) - spaces
            pct = 100 if spaces > nonspaces or nonspaces == 0 else int(100 * spaces / nonspaces)
            best = max(best, pct)
        return best
    hi = 101.0 if float(high) >= 100 else float(high)
    v = _cached(msg, "tvd_vertical", value)
    return float(low) <= v < hi


# --- HTML -----------------------------------------------------------------------------------------------------------

@register("html_test")
def html_test(msg: SaMessage, env: EvalEnv, test: str) -> bool:
    return test in msg.html.tests


@register("html_tag_exists")
def html_tag_exists(msg: SaMessage, env: EvalEnv, tag: str) -> bool:
    return tag in msg.html.inside


@register("html_tag_balance")
def html_tag_balance(msg: SaMessage, env: EvalEnv, tag: str, expr: str) -> bool:
    if tag not in msg.html.inside:
        return False
    return _compare(msg.html.inside[tag], expr)


def _compare(value: float, expr: str) -> bool:
    m = re.match(r"^\s*(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$", expr)
    if m is None:
        return False
    op, ref = m.group(1), float(m.group(2))
    return {"==": value == ref, "!=": value != ref, ">=": value >= ref, "<=": value <= ref, ">": value > ref,
            "<": value < ref}[op]


@register("html_eval")
def html_eval(msg: SaMessage, env: EvalEnv, test: str, expr: str) -> bool:
    if "html" not in msg.html.tests:
        return False
    value = msg.html.result(test)
    return value is not None and _compare(value, expr)


@register("html_range")
def html_range(msg: SaMessage, env: EvalEnv, test: str, low: str, high: str) -> bool:
    if "html" not in msg.html.tests:
        return False
    value = msg.html.result(test)
    if value is None:
        return False
    lo, hi = num(low, float("-inf")), num(high.replace("inf", "Infinity"), float("inf"))
    assert lo is not None and hi is not None
    return lo < value <= hi


@register("html_text_match")
def html_text_match(msg: SaMessage, env: EvalEnv, text: str, regex: str) -> bool:
    try:
        pattern = env.compiled_regex(regex)
    except re.error:
        return False
    return any(pattern.search(t.encode("utf-8", "replace")) for t in msg.html.texts(text))


@register("html_image_only")
def html_image_only(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    return any(p.html is not None and "img" in p.html.inside and float(low) < p.html.length <= float(high)
               for p in msg.parts)


@register("html_image_ratio")
def html_image_ratio(msg: SaMessage, env: EvalEnv, low: str, high: str) -> bool:
    for p in msg.parts:
        if p.html is not None and p.html.image_area > 0:
            ratio = len("".join(p.html.text().split())) / p.html.image_area
            if float(low) < ratio <= float(high):
                return True
    return False


@register("html_title_subject_ratio")
def html_title_subject_ratio(msg: SaMessage, env: EvalEnv, ratio: str) -> bool:
    subject = msg.first("Subject")
    if not subject:
        return False
    return any(p.html is not None and max((len(t) / (len(subject) + 1) for t in p.html.titles if t), default=0)
               > float(ratio) for p in msg.parts)


# --- images (ImageInfo) -----------------------------------------------------------------------------------------

def _dimensions(ctype: str, data: bytes) -> tuple[int, int] | None:
    try:
        if ctype == "image/gif" and data[:3] == b"GIF":
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if ctype == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if ctype in ("image/jpeg", "image/jpg") and data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                length = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xC3:
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                i += 2 + length
    except struct.error:
        return None
    return None


def _images(msg: SaMessage) -> dict[str, float]:
    info: dict[str, float] = {}
    for p in msg.parts:
        kind = {"image/gif": "gif", "image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg"}.get(p.ctype)
        if kind is None:
            continue
        for key in (kind, "all"):
            info[f"count_{key}"] = info.get(f"count_{key}", 0) + 1
        dims = _dimensions(p.ctype, p.decoded[:65536])
        if dims is not None:
            for key in (kind, "all"):
                info[f"pc_{key}"] = info.get(f"pc_{key}", 0) + dims[0] * dims[1]
    return info


def _result_check(low: str, high: str | None, value: float | None, exclusive: bool = False) -> bool:
    if value is None:
        return False
    if high is None:
        return value >= float(low)
    return (value > float(low) if exclusive else value >= float(low)) and value <= float(high)


@register("image_count")
def image_count(msg: SaMessage, env: EvalEnv, kind: str, low: str, high: str | None = None) -> bool:
    return _result_check(low, high, _cached(msg, "images", _images).get(f"count_{kind}"))


@register("pixel_coverage")
def pixel_coverage(msg: SaMessage, env: EvalEnv, kind: str, low: str, high: str | None = None) -> bool:
    return _result_check(low, high, _cached(msg, "images", _images).get(f"pc_{kind}"))


@register("image_to_text_ratio")
def image_to_text_ratio(msg: SaMessage, env: EvalEnv, kind: str, low: str, high: str) -> bool:
    area = _cached(msg, "images", _images).get(f"pc_{kind}", 0)
    text_len = len(msg.body)
    return bool(area and text_len) and _result_check(low, high, text_len / area, exclusive=True)


# --- URIs -------------------------------------------------------------------------------------------------------

@register("check_uri_truncated")
def check_uri_truncated(msg: SaMessage, env: EvalEnv) -> bool:
    return any(len(u) > 8192 for u in msg.html.uris)


@register("check_https_http_mismatch")
def check_https_http_mismatch(msg: SaMessage, env: EvalEnv) -> bool:
    facts = msg.html
    return any(a.strip().lower().startswith("https://") for a in facts.anchors) and \
        any(u.lower().startswith("http://") for u in facts.uris)


@register("check_iframe_src")
def check_iframe_src(msg: SaMessage, env: EvalEnv) -> bool:
    return "iframe" in msg.html.inside and bool(msg.html.uris)


@register("check_blank_line_ratio")
def check_blank_line_ratio(msg: SaMessage, env: EvalEnv, low: str, high: str, minlines: str = "1") -> bool:
    lines = [p.text for p in msg.parts if p.text is not None and p.html is None]
    all_lines = "\n".join(lines).split("\n")
    if len(all_lines) < float(minlines):
        return False
    blank = sum(1 for line in all_lines if not line.strip())
    return in_range(blank / len(all_lines) * 100, low, high)


