"""What every ``mailward`` subcommand module shares: a database session for the operator and the audit helper.

A leaf module: it imports no other ``mailward`` module, so the subcommand modules import it at the top and
``mailward.cli`` (the root group) imports them, with no cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from tenants import audit
from tenants.platform.config import Config, get_config
from tenants.platform.db import require_current_schema, session_scope
from tenants.scope import msp_scope

#: Who the audit log names for lifecycle actions taken on the command line (the operator's tool, no signed-in user).
CLI_ACTOR = "cli"


@contextmanager
def db_session(cfg: Config | None = None) -> Iterator[Session]:
    """A session in the MSP scope (the CLI is the operator's tool) on a migrated database; commits on success."""
    cfg = cfg or get_config()
    require_current_schema(cfg)
    with msp_scope(), session_scope(cfg) as session:
        yield session


def cli_audit(session: Session, action: str, target: str, detail: str = "", *, tenant_id: int | None) -> None:
    audit.record(session, actor=CLI_ACTOR, action=action, target=target, detail=detail, tenant_id=tenant_id)
