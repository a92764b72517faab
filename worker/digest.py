"""Quarantine digests: a branded mail to each user listing the spam held for their addresses since the last one.

Schedule: the scheduler calls :func:`schedule_digests` every few minutes; a tenant with ``digest_enabled`` whose
local time (``timezone``) has reached ``digest_hour`` gets one :func:`tenant_job` per local day (a Redis key per
tenant and date). That job queues one :func:`user_job` per user (role ``user`` or ``tenant_admin``) whose login
e-mail or aliases have spam or attachment-held mail held since their last digest. Virus quarantines never appear in
digests. Attachment holds are listed apart, with their reason and without links: only an administrator releases them
(as in the end-user quarantine), so the digest says to ask one.

Each listed spam mail has one-click links (release, delete, allow sender, block sender): signed, single-use tokens that
expire (:mod:`tenants.tokens`), opened at ``/q/action/<token>`` on the web; a magic link signs the user in to the
portal. The digest is stored and delivered like any mail (``direction="digest"``), through the worker's delivery
path with its retries. ``User.last_digest_at`` moves with a compare-and-set in the digest's own transaction, so a
digest job that runs twice (retry, or the CLI while the scheduler's runs) sends at most one digest per window.
"""

from __future__ import annotations

import email.policy
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from rq import Retry
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tenants.addresses import address_owners, normalize_address, rcpt_in, user_addresses
from tenants.branding import brand_of
from tenants.exceptions import NotFound
from tenants.models import Delivery, DeliveryStatus, Message, Role, Tenant, User, utcnow
from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.platform.jobs import enqueue_job, enqueue_once
from tenants.platform.redisconn import redis_client
from tenants.policy import Policy, load_policy
from tenants.scope import load, msp_scope, tenant_scope
from tenants.tokens import ACTION_TOKEN_MAX_AGE, action_url, login_url, make_action_token, make_login_token
from worker.usermail import queue_user_mail

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Quarantine kinds a digest lists: spam (with one-click links) and attachment holds (an administrator releases those).
DIGEST_KINDS: tuple[str, ...] = ("spam", "attachment")
#: Roles that get digests (auditors and MSP staff do not).
DIGEST_ROLES: tuple[str, ...] = (Role.USER.value, Role.TENANT_ADMIN.value)
#: A digest never lists mail older than this (nor older than its links live), e.g. after digests were off a while.
MAX_LOOKBACK = min(timedelta(days=7), ACTION_TOKEN_MAX_AGE)
#: Most mails one digest lists (newest first); the portal link shows the rest.
MAX_ITEMS = 200
#: Seconds between the scheduler's checks of each tenant's local hour.
DIGEST_CHECK_INTERVAL = 300
#: The RQ jobs that send one user's digest and queue a tenant's (names resolved by tests/unit/test_job_names.py).
DIGEST_USER_JOB = "worker.digest.user_job"
DIGEST_TENANT_JOB = "worker.digest.tenant_job"
#: How often a failed digest job is retried at once (it only reads and writes the database; delivery retries apart).
DIGEST_JOB_RETRIES = 3
#: Seconds one tenant's or one user's digest job may run.
DIGEST_JOB_TIMEOUT = 600
#: Days a sent digest is kept (its links are live that long, so the stored copy goes when they expire).
DIGEST_RETENTION_DAYS = ACTION_TOKEN_MAX_AGE.days + 1
#: Redis key marking a tenant's digest day as done: tenant id and local date.
DAY_KEY = "mailward:digest-day:{tenant_id}:{date}"
#: Seconds the day key lives (past the end of any time zone's day).
DAY_KEY_TTL = 2 * 86400

_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class DigestItem:
    message_id: str
    rcpts: tuple[str, ...]
    sender: str
    subject: str
    received: str
    score: float
    links: dict[str, str]
    #: "spam", or "attachment" (no links: an administrator releases it).
    kind: str = "spam"
    #: Why it was held (the scan's explanation), shown for attachment holds.
    reason: str = ""


@dataclass
class Digest:
    """A built digest, before it is stored: who it goes to and what it says."""

    to: str
    sender: str
    subject: str
    items: list[DigestItem]
    data: bytes = field(repr=False, default=b"")


# --- who gets one ---------------------------------------------------------------------------------------------------

def held_spam(session: Session, addresses: list[str], *, since: datetime, until: datetime,
              limit: int = MAX_ITEMS, kinds: tuple[str, ...] = ("spam",)) -> list[tuple[Message, list[str]]]:
    """Mail of ``kinds`` (spam by default) held for any of ``addresses`` that arrived in (since, until], newest first,
    with the addresses."""
    rows = session.execute(
        select(Message, Delivery.rcpt).join(Delivery, Delivery.message_id == Message.id)
        .where(Message.quarantine_kind.in_(kinds), Message.received_at > since, Message.received_at <= until,
               Delivery.status == DeliveryStatus.QUARANTINED.value, rcpt_in(Delivery.rcpt, addresses))
        .order_by(Message.received_at.desc(), Message.id.desc(), Delivery.id)
    ).all()
    out: dict[str, tuple[Message, list[str]]] = {}
    for msg, rcpt in rows:
        if msg.id not in out:
            if len(out) >= limit:
                break
            out[msg.id] = (msg, [])
        out[msg.id][1].append(rcpt)
    return list(out.values())


def digest_users(session: Session, tenant_id: int, *, now: datetime | None = None) -> list[int]:
    """Ids of the tenant's users (digest roles, active) with spam or attachment-held mail held for one of their
    addresses since their last digest; run in the tenant's scope."""
    now = now or utcnow()
    oldest = now - MAX_LOOKBACK
    rcpts = set(session.scalars(
        select(Delivery.rcpt).join(Message, Message.id == Delivery.message_id)
        .where(Message.quarantine_kind.in_(DIGEST_KINDS), Message.received_at > oldest,
               Delivery.status == DeliveryStatus.QUARANTINED.value).distinct()))
    owners = address_owners(session, tenant_id)
    candidates = {owners[a] for a in map(normalize_address, rcpts) if a in owners}
    if not candidates:
        return []
    users = session.scalars(select(User).where(User.id.in_(candidates), User.role.in_(DIGEST_ROLES),
                                               User.active.is_(True)).order_by(User.id))
    by_user: dict[int, list[str]] = {}
    for address, user_id in owners.items():
        by_user.setdefault(user_id, []).append(address)
    out = []
    for user in users:
        since = max(user.last_digest_at or oldest, oldest)
        mine = by_user.get(user.id, [])
        if held_spam(session, mine, since=since, until=now, limit=1, kinds=DIGEST_KINDS):
            out.append(user.id)
    return out


# --- building and sending -------------------------------------------------------------------------------------------

def _local(when: datetime, policy: Policy) -> str:
    return when.astimezone(ZoneInfo(policy.timezone)).strftime("%Y-%m-%d %H:%M")


def build_digest(cfg: Config, tenant: Tenant, user: User, policy: Policy,
                 held: list[tuple[Message, list[str]]], *, now: datetime | None = None) -> Digest:
    """Render the digest mail (text and HTML alternatives, tenant-branded) with fresh action and login links; spam
    first, then attachment holds (listed with their reason, without links)."""
    now = now or utcnow()
    secret = cfg.resolve_secret_key()
    items = []
    for msg, rcpts in held:
        if msg.quarantine_kind == "attachment":
            items.append(DigestItem(msg.id, tuple(rcpts), msg.header_from or msg.mail_from or "<>",
                                    msg.subject or "(no subject)", _local(msg.received_at, policy), msg.score, {},
                                    kind="attachment", reason=msg.explanation or "a blocked attachment"))
            continue
        links = {action: action_url(cfg, make_action_token(secret, tenant_id=tenant.id, message_id=msg.id,
                                                           rcpts=rcpts, action=action, user_id=user.id))
                 for action in ("release", "delete", "allow", "block")}
        items.append(DigestItem(msg.id, tuple(rcpts), msg.header_from or msg.mail_from or "<>",
                                msg.subject or "(no subject)", _local(msg.received_at, policy), msg.score, links))
    brand = brand_of(tenant)
    portal = login_url(cfg, make_login_token(secret, tenant_id=tenant.id, user_id=user.id, email=user.email))
    sender = policy.digest_sender or cfg.bounce_sender
    subject = f"{brand.name}: {len(items)} new message{'s' if len(items) != 1 else ''} in your quarantine"
    spam = [i for i in items if i.kind == "spam"]
    held_attachments = [i for i in items if i.kind == "attachment"]
    context = dict(brand=brand, user=user.email, items=spam, attachments=held_attachments, portal_url=portal,
                   subject=subject, expires_days=ACTION_TOKEN_MAX_AGE.days, generated=_local(now, policy),
                   timezone=policy.timezone)
    mail = EmailMessage(policy=email.policy.SMTP)
    local, _, domain = sender.rpartition("@")
    mail["From"] = Address(display_name=brand.name, username=local, domain=domain)
    mail["To"] = user.email
    mail["Subject"] = subject
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = make_msgid("digest", domain=cfg.hostname)
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Auto-Response-Suppress"] = "All"
    mail.set_content(_env.get_template("digest.txt").render(context))
    mail.add_alternative(_env.get_template("digest.html").render(context), subtype="html")
    return Digest(user.email, sender, subject, items, mail.as_bytes())


def send_user_digest(cfg: Config, tenant_id: int, user_id: int, *, now: datetime | None = None) -> str | None:
    """Build, store and queue one user's digest; the stored message's id, or None when there is nothing new (or
    another run sent this window's digest first)."""
    now = now or utcnow()
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        user = load(session, User, user_id)
        if not user.active or user.role not in DIGEST_ROLES:
            return None
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id}")
        policy = load_policy(session, tenant_id)
        previous = user.last_digest_at
        since = max(previous or now - MAX_LOOKBACK, now - MAX_LOOKBACK)
        held = held_spam(session, user_addresses(session, user), since=since, until=now, kinds=DIGEST_KINDS)
        if not held:
            return None
        unchanged = User.last_digest_at.is_(None) if previous is None else User.last_digest_at == previous
        moved = session.execute(update(User).where(User.id == user.id, unchanged).values(last_digest_at=now)
                                .execution_options(synchronize_session=False))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            log.info("digest of %s: another run was first", user.email)
            return None
        digest = build_digest(cfg, tenant, user, policy, held, now=now)
        message_id = queue_user_mail(
            session, cfg, tenant_id, normalize_address(user.email), sender=digest.sender, data=digest.data,
            direction="digest", subject=digest.subject,
            explanation=f"quarantine digest: {len(digest.items)} message(s)", retention_days=DIGEST_RETENTION_DAYS)
    log.info("digest %s to %s: %d message(s)", message_id, user.email, len(digest.items))
    return message_id


# --- jobs and schedule ----------------------------------------------------------------------------------------------

def user_job(tenant_id: int, user_id: int) -> str | None:
    """RQ job: one user's digest."""
    return send_user_digest(get_config(), tenant_id, user_id)


def enqueue_user_digests(cfg: Config, tenant_id: int, user_ids: list[int]) -> int:
    for user_id in user_ids:
        enqueue_job(cfg, DIGEST_USER_JOB, tenant_id, user_id, timeout=DIGEST_JOB_TIMEOUT,
                    retry=Retry(max=DIGEST_JOB_RETRIES), description=f"digest of user {user_id}")
    return len(user_ids)


def tenant_job(tenant_id: int, user_email: str | None = None) -> int:
    """RQ job: queue the digests of a tenant's users (or of one user); returns how many were queued."""
    cfg = get_config()
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        user_ids = digest_users(session, tenant_id)
        if user_email is not None:
            wanted = session.scalar(select(User.id).where(User.email == user_email.strip().lower()))
            if wanted is None:
                raise NotFound(f"no user {user_email} in tenant {tenant_id}")
            user_ids = [u for u in user_ids if u == wanted]
    return enqueue_user_digests(cfg, tenant_id, user_ids)


def due_tenants(session: Session, now: datetime) -> list[tuple[int, str]]:
    """(tenant id, local date) of every active tenant with digests on whose local hour has reached its digest hour."""
    out = []
    with msp_scope():
        tenants = session.execute(select(Tenant.id).where(Tenant.suspended.is_(False)).order_by(Tenant.id)).all()
    for (tenant_id,) in tenants:
        with tenant_scope(tenant_id):
            policy = load_policy(session, tenant_id)
        if not policy.digest_enabled:
            continue
        local = now.astimezone(ZoneInfo(policy.timezone))
        if local.hour >= policy.digest_hour:
            out.append((tenant_id, local.date().isoformat()))
    return out


def schedule_digests(cfg: Config, *, now: datetime | None = None) -> list[int]:
    """Queue the tenant digest job of every tenant whose digest time has come and whose day is not done yet."""
    now = now or utcnow()
    with session_scope(cfg) as session:
        due = due_tenants(session, now)
    conn = redis_client(cfg)
    queued = []
    for tenant_id, day in due:
        if enqueue_once(cfg, DAY_KEY.format(tenant_id=tenant_id, date=day), DAY_KEY_TTL, DIGEST_TENANT_JOB, tenant_id,
                        connection=conn, timeout=DIGEST_JOB_TIMEOUT, description=f"digests of tenant {tenant_id}"):
            queued.append(tenant_id)
    if queued:
        log.info("digests queued for tenant(s) %s", ", ".join(map(str, queued)))
    return queued
