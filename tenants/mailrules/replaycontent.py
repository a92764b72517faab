"""What a stored mail's content tells the rules, for the dry-run replay (:mod:`tenants.mailrules.replay`).

The ingress gives the rules the headers, the attachments (name, real type, size) and the files inside archives as
its checks found them; those facts are not stored, so the replay reads them again from the stored raw mail, and
only when a rule needs them. Standard library parsing (:mod:`tenants.mail.mimetext`, within the ingress's MIME limits),
real types by libmagic as the attachment check does, and zip members by name only (their central directory: at most
:data:`MAX_MEMBERS` entries, nothing extracted; a member's type is guessed from its name).
"""

from __future__ import annotations

import io
import mimetypes
import zipfile
from dataclasses import dataclass

import magic

from tenants.mail.mimescan import LIMITS, Budget, MimeLimitExceeded, scan
from tenants.mail.mimetext import one_line, parse_message, split_parts

#: Bytes of an attachment given to libmagic.
SNIFF_BYTES = 65_536
#: Entries of one zip file's directory looked at.
MAX_MEMBERS = 200
#: Real types read as zip archives.
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
#: Longest header value kept (the rules' header condition looks at 4,000 characters).
MAX_HEADER_VALUE = 4000


@dataclass(frozen=True)
class Content:
    """A stored mail's headers, attachments (name, real type, size) and archive members (name, type)."""

    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[tuple[str, str, int], ...] = ()
    archive_members: tuple[tuple[str, str], ...] = ()
    #: Why the content could not be read (over the MIME limits, unparseable), or None.
    problem: str | None = None


def sniff(data: bytes) -> str:
    """The real MIME type of ``data`` (libmagic); ``application/octet-stream`` when it cannot tell."""
    try:
        return str(magic.from_buffer(data[:SNIFF_BYTES], mime=True)).lower()
    except Exception:  # libmagic errors on odd input: unknown type
        return "application/octet-stream"


def zip_members(data: bytes) -> list[tuple[str, str]]:
    """(name, type guessed from the name) of the first :data:`MAX_MEMBERS` entries of a zip file; [] if unreadable."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()[:MAX_MEMBERS]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return []
    return [(name, mimetypes.guess_type(name)[0] or "application/octet-stream") for name in names if
            not name.endswith("/")]


def _ours(name: str, value: str, hostname: str, received_seen: bool) -> bool:
    """A header field the ingress added on top of the stored mail (the rules saw the mail without them)."""
    lower = name.lower()
    if lower.startswith("x-mailward-"):
        return True
    if lower == "authentication-results" and value.strip().lower().startswith(hostname.lower()):
        return True
    return lower == "received" and not received_seen and "(mailward)" in value.lower()


def read_content(raw: bytes, hostname: str) -> Content:
    """The rules' content facts of one stored mail; a mail over the MIME limits gives none (``problem`` says why)."""
    over = scan(raw).over
    if over is not None:
        return Content(problem=over)
    budget = Budget()
    try:
        msg = parse_message(raw, budget)
    except MimeLimitExceeded as exc:
        return Content(problem=str(exc))
    except Exception as exc:  # the parser gave up: nothing to look at, as for any mail it cannot read
        return Content(problem=f"unparseable: {type(exc).__name__}")
    headers: list[tuple[str, str]] = []
    received_seen = False
    for name, value in msg.raw_items():
        try:
            text = one_line(msg.policy.header_fetch_parse(name, value))  # type: ignore[attr-defined]
        except Exception:
            text = one_line(value)
        if _ours(name, text, hostname, received_seen):
            received_seen = received_seen or name.lower() == "received"
            continue
        headers.append((name, text[:MAX_HEADER_VALUE]))
    parts = split_parts(msg, max_parts=LIMITS.max_parts, budget=budget)
    attachments: list[tuple[str, str, int]] = []
    members: list[tuple[str, str]] = []
    for leaf in parts.leaves:
        real = sniff(leaf.data)
        attachments.append((leaf.filename or "", real, len(leaf.data)))
        if real in ZIP_TYPES and len(members) < MAX_MEMBERS:
            members.extend(zip_members(leaf.data)[:MAX_MEMBERS - len(members)])
    return Content(tuple(headers), tuple(attachments), tuple(members), parts.over_limits)
