"""Content-Security-Policies beyond the site-wide one: the quarantine preview frame, and tenant-branded pages.

The preview frame shows the sanitised HTML of a quarantined mail (:mod:`tenants.mail.preview`). It is served from
its own
URL with a policy that allows nothing but its own fixed inline style (by hash) and carries ``sandbox``, so even
opened on its own (not inside the page's ``<iframe sandbox="">``) it runs no script, loads nothing, submits no form
and cannot navigate its parent: a second wall behind the sanitiser.

Branded pages (the end-user quarantine) set the tenant's accent colour in one small ``<style>`` block allowed by its
hash, and may show a logo from the one ``https`` origin the tenant configured; everything else stays as strict as
the site-wide policy (no inline script, no inline style attributes).
"""

from __future__ import annotations

import base64
import hashlib

from flask import render_template
from markupsafe import Markup
from werkzeug.wrappers import Response

from tenants.branding import Brand
from tenants.mail.preview import Preview

#: The site's policy: no inline script or style and no framing; templates load only /static, and forms post only to
#: this site.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: The only style in the preview frame (links and blocked images as the sanitiser marks them).
PREVIEW_STYLE = (
    "body{margin:0;padding:12px 16px;font:14px/1.5 system-ui,sans-serif;color:#1d2430;background:#fff;"
    "overflow-wrap:anywhere}"
    "pre{white-space:pre-wrap;font:13px/1.45 ui-monospace,monospace;margin:0}"
    "table{max-width:100%}"
    ".mw-link{color:#1f5fbf;text-decoration:underline dotted;cursor:help}"
    ".mw-img-blocked{display:inline-block;padding:0 4px;border:1px dashed #a0a8b4;color:#5f6b7a;font-size:12px}"
)


def style_hash(css: str) -> str:
    """The CSP source expression allowing exactly this inline ``<style>`` content."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"


#: Nothing loads, nothing runs; only framed by our own pages. ``sandbox`` applies even when opened directly.
PREVIEW_CSP = (
    f"default-src 'none'; style-src {style_hash(PREVIEW_STYLE)}; img-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'; sandbox"
)


def preview_response(preview: Preview) -> Response:
    """The preview frame's document: the sanitised HTML, else the text part, with :data:`PREVIEW_CSP`."""
    html = Markup(preview.html) if preview.html else None  # sanitised by tenants.mail.preview: safe to insert
    body = render_template("quarantine/frame.html", style=Markup(PREVIEW_STYLE), html=html, text=preview.text)
    resp = Response(body, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = PREVIEW_CSP
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def brand_css(brand: Brand) -> Markup:
    """The branded pages' one inline style: CSS variables from validated ``#rrggbb`` values only."""
    return Markup(f":root{{--brand:{brand.color};--brand-ink:{brand.ink}}}")


def branded_policy(base_policy: str, brand: Brand) -> str:
    """The site-wide policy plus the brand's style block (by hash) and its logo origin for ``img-src``."""
    directives = []
    for directive in base_policy.split(";"):
        name = directive.strip().split(" ", 1)[0]
        if name == "style-src":
            directive = f"{directive.strip()} {style_hash(str(brand_css(brand)))}"
        elif name == "img-src" and brand.logo_origin:
            directive = f"{directive.strip()} {brand.logo_origin}"
        directives.append(directive.strip())
    return "; ".join(directives)
