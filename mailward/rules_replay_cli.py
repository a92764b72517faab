"""``mailward rules replay TENANT --since 7d [--draft FILE.yaml]``: the dry-run replay, inline, its report printed.

Registered on the ``rules`` group by :func:`register` (called at the end of :mod:`mailward.rules_cli`). The draft is
a rule file as ``rules export`` writes it (the tenant's own rules; its provider's stay as they are); without one the
current rules are replayed against themselves (no changes, the hit counts only). Errors exit 1 with the message.
"""

from __future__ import annotations

import re
from datetime import timedelta

import click

from mailward.clicommon import db_session

#: ``--since``: a number of days (``7d``), hours (``12h``) or weeks (``2w``); a bare number is days.
_SINCE_RE = re.compile(r"^\s*(\d+)\s*([dhw]?)\s*$", re.IGNORECASE)


def parse_since(value: str) -> timedelta:
    found = _SINCE_RE.match(value or "")
    if found is None:
        raise click.BadParameter(f"{value!r} is not a window like 7d, 12h or 2w")
    n, unit = int(found.group(1)), (found.group(2) or "d").lower()
    return timedelta(hours=n) if unit == "h" else timedelta(weeks=n) if unit == "w" else timedelta(days=n)


def register(group: click.Group) -> None:
    """Add ``replay`` to the ``rules`` group."""

    @group.command("replay")
    @click.argument("tenant_ref", metavar="TENANT")
    @click.option("--since", "since", default="7d", show_default=True, help="How far back: 7d, 12h, 2w (at most 30d).")
    @click.option("--draft", "draft_path", metavar="FILE", help="A rule file (YAML) to compare with the current rules.")
    def rules_replay(tenant_ref: str, since: str, draft_path: str | None) -> None:
        """Replay the tenant's stored mail under its rules and under a draft, and print what would change."""
        from mailward.rules_cli import _read
        from tenants.exceptions import ValidationError
        from tenants.mailrules.replay import replay
        from tenants.mailrules.yamlio import load_text
        from tenants.platform.config import get_config
        from tenants.scope import tenant_scope
        from tenants.services import get_tenant

        window = parse_since(since)
        draft = None
        try:
            if draft_path is not None:
                draft = load_text(_read(draft_path))
                draft = [] if draft is None else draft
                if not isinstance(draft, list):
                    raise ValidationError("a draft is a YAML list of rules (- name: ...)")
            cfg = get_config()
            with db_session(cfg) as session:
                tenant_id = get_tenant(session, tenant_ref).id
                with tenant_scope(tenant_id):
                    report = replay(session, cfg, tenant_id, window, draft)
        except ValidationError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(report.text(), nl=False)
