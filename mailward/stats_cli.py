"""``mailward stats``: run the statistics roll-up now (what the scheduler queues every few minutes).

Registered in :mod:`mailward.cli` with ``cli.add_command(stats)``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click


@click.group()
def stats() -> None:
    """Statistics and usage metering."""


@stats.command("rollup")
@click.option("--since", metavar="YYYY-MM-DD", help="Recompute from this day (UTC) instead of the watermark's day.")
def stats_rollup(since: str | None) -> None:
    """Roll up the mail received since the last run (or since a day) into the statistics tables."""
    from tenants.platform.config import get_config
    from tenants.platform.db import require_current_schema
    from worker.rollup import rollup

    cfg = get_config()
    require_current_schema(cfg)
    start = None
    if since:
        try:
            start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise click.BadParameter("use YYYY-MM-DD", param_hint="--since") from None
    report = rollup(cfg, since=start)
    if report.since is None:
        click.echo("no mail yet: nothing to roll up")
        return
    click.echo(f"rolled up {report.messages} message(s) of {report.tenants} tenant(s) "
               f"from {report.since:%Y-%m-%d} to {report.until:%Y-%m-%d %H:%M} UTC")
