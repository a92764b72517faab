"""A tenant's branding on its end-user pages: the name shown, an accent colour, a logo.

The values are set by tenant admins and shown to their users, so they are validated on the way in
(:func:`set_branding`) and again on the way out (:func:`brand_of`: a bad value stored by older code or by hand is
dropped, never rendered). The colour is ``#rrggbb``; the logo is an ``https://`` URL on a plain host name, because the
pages that show it name its origin in their Content-Security-Policy (``img-src``) and load nothing else remotely.
People's browsers load it, so its host must be public (:mod:`tenants.egress`): a tenant must not point its users'
browsers at the MSP's internal addresses or a cloud metadata service. The saved host is resolved and checked; on the
way out a host that is itself a refused address is dropped (no DNS while a page renders).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from tenants.egress import WEB, EgressPolicy, literal_address, refused_reason
from tenants.exceptions import ValidationError
from tenants.models import Tenant

#: The accent colour when a tenant has none (the digest's default too).
DEFAULT_COLOR = "#1f6feb"
MAX_NAME = 200
MAX_LOGO_URL = 500

_COLOR_RE = re.compile(r"^#[0-9a-f]{6}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Characters a logo URL may hold: no quotes, spaces, angle brackets or backslashes, nothing to break out of a
#: header or an attribute.
_URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+$")


@dataclass(frozen=True)
class Brand:
    """What a branded page shows: ``logo_origin`` is the ``scheme://host[:port]`` to allow in ``img-src``."""

    name: str
    color: str
    #: Text colour readable on ``color`` (dark on light accents, white on dark ones).
    ink: str
    logo_url: str | None
    logo_origin: str | None


def validate_color(value: str) -> str | None:
    """``#rrggbb`` in lower case, or None for an empty value; :class:`ValidationError` otherwise."""
    v = value.strip().lower()
    if not v:
        return None
    if not _COLOR_RE.match(v):
        raise ValidationError(f"colour {value!r}: write it as #rrggbb, e.g. #1f6feb")
    return v


def logo_origin(url: str) -> str | None:
    """The origin of an acceptable logo URL (https, a host name or IP, an optional port), else None."""
    if not url or len(url) > MAX_LOGO_URL or not _URL_CHARS.match(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or parts.username or parts.password or not _HOST_RE.match(host):
        return None
    literal = literal_address(host)
    if literal is not None and refused_reason(literal) is not None:
        return None
    return f"https://{host}" + (f":{port}" if port else "")


def validate_logo_url(value: str, egress: EgressPolicy) -> str | None:
    """The logo URL, checked: https, a plain host, and (``egress``) a host on public addresses only."""
    v = value.strip()
    if not v:
        return None
    if logo_origin(v) is None:
        raise ValidationError(f"logo URL {value[:100]!r}: use an https:// address of an image on a named host "
                              f"(at most {MAX_LOGO_URL} characters) on a public address")
    egress.vet(WEB, (urlsplit(v).hostname or "").lower(), None, label="logo host")
    return v


def set_branding(tenant: Tenant, *, name: str, color: str, logo_url: str, egress: EgressPolicy) -> None:
    """Validate and store a tenant's branding; an empty value clears it (the tenant's name, the default colour).
    ``egress`` checks the logo's host. The caller commits."""
    clean_name = " ".join(name.split())
    if len(clean_name) > MAX_NAME:
        raise ValidationError(f"brand name too long: at most {MAX_NAME} characters")
    tenant.brand_color = validate_color(color)
    tenant.brand_logo_url = validate_logo_url(logo_url, egress)
    tenant.brand_name = clean_name or None


def _ink(color: str) -> str:
    r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#1d2430" if luminance > 0.6 else "#ffffff"


def brand_of(tenant: Tenant) -> Brand:
    """The tenant's brand as pages show it; values that do not validate fall back to the defaults."""
    try:
        color = validate_color(tenant.brand_color or "") or DEFAULT_COLOR
    except ValidationError:
        color = DEFAULT_COLOR
    logo = tenant.brand_logo_url or None
    origin = logo_origin(logo) if logo else None
    return Brand(name=tenant.brand_name or tenant.name, color=color, ink=_ink(color),
                 logo_url=logo if origin else None, logo_origin=origin)
