"""The quarantine: find held mail, look into it safely, and act on it (release, delete, list the sender, report).

One service layer for the CLI, the web consoles, the end-user portal, the API and digest links. Every function works
in the caller's scope (a tenant's, or the MSP's for the console and the CLI) and never commits: the caller does, and
work that must follow a commit (queueing the delivery of released mail, Bayes training) is asked for with
:func:`tenants.platform.jobs.after_commit`, so it runs only if the commit happened.

Who may do what is the caller's decision, passed in explicitly:

- ``rcpts``: the addresses an end user may act for (:func:`tenants.addresses.user_addresses`). Given, a message
  with no row for them is :class:`NotFound` (as another tenant's is), and actions touch only their rows. ``None``
  means every recipient (admins, helpdesk, the CLI).
- ``actor_is_admin``: virus releases and releases to another address need it (raise :class:`PermissionDenied`).
- ``outside_ok``: a release to an address outside the tenant's own domains needs it too (a tenant's admin in the
  portal, an API key with the ``write`` scope besides ``quarantine``); without it a copy stays inside the tenant.
- ``actor``: who did it (an e-mail address, "cli", "api key mw_1234"), written to the message's timeline.

A held mail is a :class:`~tenants.models.Message` with a ``quarantine_kind`` and delivery rows in status
``quarantined``; a release sets its rows back to ``queued``, a delete to ``discarded`` (moves that
:mod:`tenants.deliveries`, the owner of a row's state, makes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tenants import deliveries, learning, lists, tracking
from tenants.addresses import normalize_address, rcpt_in
from tenants.blobs import blob_store
from tenants.exceptions import MailwardError, NotFound, PermissionDenied, ValidationError
from tenants.mail.bayes import train, untrain
from tenants.mail.preview import AttachmentInfo, Preview, parse_view
from tenants.mailsort import Order, capped_count
from tenants.mailsort import decode_cursor as decode_cursor  # noqa: F401 - re-exported for older callers
from tenants.mailsort import encode_cursor as encode_cursor  # noqa: F401
from tenants.models import (
    Delivery,
    DeliveryStatus,
    Domain,
    Event,
    Finding,
    ListEntry,
    Message,
    MessageView,
    User,
)
from tenants.platform.config import Config
from tenants.platform.jobs import after_commit, enqueue_job, request_delivery_after_commit
from tenants.scope import load, tenant_scope
from tenants.tokens import ActionClaim, record_result, spend, spent_result, verify_action_token

#: Kinds of quarantine.
KINDS: tuple[str, ...] = ("spam", "virus", "attachment")
#: Page size of :func:`search` unless asked otherwise, and the most one page may hold.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Event kinds that record Bayes training from the quarantine, by class.
TRAINED_EVENT = {True: "trained_spam", False: "trained_ham"}
#: The job that trains a tenant's Bayes with a stored mail (worker.jobs.report).
REPORT_JOB = "worker.jobs.report"

_HELD = DeliveryStatus.QUARANTINED.value


@dataclass(frozen=True)
class QuarantineItem:
    """One held mail as a list shows it; ``rcpts`` are its held recipients (only the caller's, given ``rcpts``)."""

    id: str
    tenant_id: int
    kind: str
    received_at: datetime
    mail_from: str
    header_from: str | None
    subject: str | None
    score: float
    expires_at: datetime | None
    rcpts: tuple[str, ...]


@dataclass(frozen=True)
class FindingView:
    symbol: str
    score: float
    reason: str


@dataclass
class QuarantineDetail:
    """Everything the quarantine shows of one mail. ``preview.html`` is sanitised already; escape everything else."""

    message: Message
    #: (recipient, delivery status) of the rows the caller may see.
    rcpts: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    findings: list[FindingView]
    #: Sum of the positive scores (what made it look bad) and of the negative ones (what spoke for it).
    positive_score: float
    negative_score: float
    attachments: list[AttachmentInfo]
    preview: Preview
    #: (time, kind, detail) of the timeline, oldest first.
    events: list[tuple[datetime, str, str]]
    #: (user e-mail, last time) of everyone who opened it, most recent first.
    seen_by: list[tuple[str, datetime]]
    defects: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseResult:
    message_id: str
    tenant_id: int
    #: The recipients released (or the one other address with ``to``).
    rcpts: tuple[str, ...]
    to: str | None = None

    def __str__(self) -> str:
        return f"released to {', '.join(self.rcpts)}"


@dataclass
class BulkResult:
    """Outcome of a bulk action: what each id did, and why the others failed (they do not stop the rest)."""

    done: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# --- finding mail ---------------------------------------------------------------------------------------------------

def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _addresses(rcpt: str | None, rcpts: Sequence[str] | None) -> list[str] | None:
    """The recipient addresses to filter by: None for any; [] when the filter can match nothing."""
    allowed = [normalize_address(r) for r in rcpts] if rcpts is not None else None
    if rcpt is None:
        return allowed
    wanted = normalize_address(rcpt)
    return [wanted] if allowed is None or wanted in allowed else []


def _statement(*, kind: str | None, addresses: list[str] | None, sender: str | None, since: datetime | None,
               until: datetime | None, min_score: float | None, max_score: float | None, text: str | None,
               held_only: bool):  # type: ignore[no-untyped-def]
    """The filtered SELECT of held mail (no order, no paging)."""
    stmt = select(Message).where(Message.quarantine_kind == kind if kind else Message.quarantine_kind.in_(KINDS))
    rows = select(Delivery.id).where(Delivery.message_id == Message.id)
    if held_only:
        rows = rows.where(Delivery.status == _HELD)
    if addresses is not None:
        rows = rows.where(rcpt_in(Delivery.rcpt, addresses))
    if held_only or addresses is not None:
        stmt = stmt.where(rows.exists())
    if sender:
        stmt = stmt.where(or_(Message.mail_from.ilike(_like(sender), escape="\\"),
                              Message.header_from.ilike(_like(sender), escape="\\")))
    if text:
        stmt = stmt.where(Message.subject.ilike(_like(text), escape="\\"))
    if since is not None:
        stmt = stmt.where(Message.received_at >= since)
    if until is not None:
        stmt = stmt.where(Message.received_at < until)
    if min_score is not None:
        stmt = stmt.where(Message.score >= min_score)
    if max_score is not None:
        stmt = stmt.where(Message.score <= max_score)
    return stmt


def search(session: Session, *, kind: str | None = None, rcpt: str | None = None,
           rcpts: Sequence[str] | None = None, sender: str | None = None, since: datetime | None = None,
           until: datetime | None = None, min_score: float | None = None, max_score: float | None = None,
           text: str | None = None, after: str | None = None, limit: int = DEFAULT_LIMIT,
           held_only: bool = True, order: Order | None = None) -> tuple[list[QuarantineItem], str | None]:
    """Held mail of the current scope, newest first, one page at a time: (items, cursor of the next page or None).

    ``rcpt`` filters by one recipient, ``rcpts`` restricts to a user's addresses; ``sender`` matches part of the
    envelope sender or the From header, ``text`` part of the subject; ``since``/``until`` bound the receipt time
    (until exclusive). ``after`` is the cursor a previous page returned. Paging is a keyset on (received_at, id),
    or on another :class:`~tenants.mailsort.Order`'s column and id: no OFFSET and no count, so page 1,000 costs
    what page 1 does. ``held_only=False`` includes mail that was already released or deleted.
    """
    if kind is not None and kind not in KINDS:
        raise ValidationError(f"quarantine kind {kind!r}: use one of {', '.join(KINDS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"page size {limit}: from 1 to {MAX_LIMIT}")
    order = order or Order()
    addresses = _addresses(rcpt, rcpts)
    if addresses == []:
        return [], None
    stmt = _statement(kind=kind, addresses=addresses, sender=sender, since=since, until=until, min_score=min_score,
                      max_score=max_score, text=text, held_only=held_only)
    found = list(session.scalars(order.apply(stmt, after).limit(limit + 1)))
    page = found[:limit]
    held = _held_rcpts(session, [m.id for m in page], addresses, held_only)
    items = [QuarantineItem(m.id, m.tenant_id, m.quarantine_kind or "", m.received_at, m.mail_from, m.header_from,
                            m.subject, m.score, m.expires_at, tuple(held.get(m.id, ()))) for m in page]
    more = len(found) > limit
    return items, order.cursor(page[-1]) if more and page else None


def count(session: Session, *, kind: str | None = None, rcpt: str | None = None, rcpts: Sequence[str] | None = None,
          sender: str | None = None, since: datetime | None = None, until: datetime | None = None,
          min_score: float | None = None, max_score: float | None = None, text: str | None = None,
          held_only: bool = True) -> tuple[int, bool]:
    """How many mails :func:`search` with the same filters finds in all its pages, capped: (count, more than it)."""
    addresses = _addresses(rcpt, rcpts)
    if addresses == []:
        return 0, False
    return capped_count(session, _statement(kind=kind, addresses=addresses, sender=sender, since=since, until=until,
                                            min_score=min_score, max_score=max_score, text=text, held_only=held_only))


def _held_rcpts(session: Session, ids: list[str], addresses: list[str] | None,
                held_only: bool = True) -> dict[str, list[str]]:
    if not ids:
        return {}
    stmt = select(Delivery.message_id, Delivery.rcpt).where(Delivery.message_id.in_(ids)).order_by(Delivery.id)
    if held_only:
        stmt = stmt.where(Delivery.status == _HELD)
    if addresses is not None:
        stmt = stmt.where(rcpt_in(Delivery.rcpt, addresses))
    out: dict[str, list[str]] = {}
    for message_id, rcpt in session.execute(stmt):
        out.setdefault(message_id, []).append(rcpt)
    return out


def get(session: Session, message_id: str, *, rcpts: Sequence[str] | None = None) -> Message:
    """A quarantined mail (held now or before) of the current scope; :class:`NotFound` for anything else, another
    tenant's mail, or (given ``rcpts``) mail that none of those addresses received."""
    msg = load(session, Message, message_id)
    if msg.quarantine_kind is None:
        raise NotFound(f"Message {message_id} not found")
    if rcpts is not None:
        mine = session.scalar(select(Delivery.id).where(Delivery.message_id == msg.id,
                                                        rcpt_in(Delivery.rcpt, rcpts)).limit(1))
        if mine is None:
            raise NotFound(f"Message {message_id} not found")
    return msg


def detail(session: Session, message_id: str, *, rcpts: Sequence[str] | None = None) -> QuarantineDetail:
    """Envelope, headers, findings (positive and negative sums apart), attachments with real types, a safe preview,
    the timeline and who has seen it. Reads the raw mail; call :func:`mark_seen` when a person opens it."""
    msg = get(session, message_id, rcpts=rcpts)
    addresses = [normalize_address(r) for r in rcpts] if rcpts is not None else None
    row_stmt = select(Delivery.rcpt, Delivery.status).where(Delivery.message_id == msg.id).order_by(Delivery.id)
    if addresses is not None:
        row_stmt = row_stmt.where(rcpt_in(Delivery.rcpt, addresses))
    rows = [(r, s) for r, s in session.execute(row_stmt)]
    found = [FindingView(f.symbol, f.score, f.reason) for f in session.scalars(
        select(Finding).where(Finding.message_id == msg.id).order_by(Finding.id))]
    found.sort(key=lambda f: -abs(f.score))
    view = parse_view(blob_store.get(session, msg.id))
    events = [(e.at, e.kind, e.detail) for e in session.scalars(
        select(Event).where(Event.message_id == msg.id).order_by(Event.at, Event.id))]
    return QuarantineDetail(
        message=msg, rcpts=rows, headers=view.headers, findings=found,
        positive_score=round(sum(f.score for f in found if f.score > 0), 2),
        negative_score=round(sum(f.score for f in found if f.score < 0), 2),
        attachments=view.attachments, preview=view.preview, events=events, seen_by=seen_by(session, msg.id),
        defects=view.defects,
    )


# --- acting on it ---------------------------------------------------------------------------------------------------

def _held_rows(session: Session, msg: Message, rcpts: Sequence[str] | None) -> list[Delivery]:
    stmt = select(Delivery).where(Delivery.message_id == msg.id, Delivery.status == _HELD).order_by(Delivery.id)
    if rcpts is not None:
        stmt = stmt.where(rcpt_in(Delivery.rcpt, rcpts))
    return list(session.scalars(stmt))


def _event(session: Session, msg: Message, kind: str, detail: str) -> None:
    session.add(Event(tenant_id=msg.tenant_id, message_id=msg.id, kind=kind, detail=detail[:2000]))


def _route_for(session: Session, tenant_id: int, address: str) -> str:
    """``transport`` for an address in one of the tenant's domains, else ``mx``."""
    domain = address.rpartition("@")[2]
    owned = session.scalar(select(Domain.id).where(Domain.tenant_id == tenant_id, Domain.name == domain))
    return "transport" if owned is not None else "mx"


def release(session: Session, cfg: Config, message_id: str, *, actor: str, rcpts: Sequence[str] | None = None,
            to: str | None = None, actor_is_admin: bool = False, outside_ok: bool = False) -> ReleaseResult:
    """Deliver a held mail after all: its held rows (or those of ``rcpts``) go back to the queue, due now.

    ``to`` (admins only) delivers a copy to another address instead, leaving the held rows as they are; an address
    outside the tenant's own domains needs ``outside_ok`` as well (a copy never leaves the tenant unasked). A virus
    is released by admins only. Delivery is queued after the caller commits (the sweeper is the fallback).
    Raises :class:`NotFound`, :class:`PermissionDenied`, or :class:`ValidationError` when nothing is held any more.
    """
    msg = get(session, message_id, rcpts=rcpts)
    if msg.quarantine_kind == "virus" and not actor_is_admin:
        raise PermissionDenied("a virus can only be released by an administrator")
    if to is not None:
        if not actor_is_admin:
            raise PermissionDenied("only an administrator may release to another address")
        address = normalize_address(to)
        lists.validate_value(address, "address")
        route = _route_for(session, msg.tenant_id, address)
        if route != "transport" and not outside_ok:
            raise PermissionDenied(f"{address} is not in one of the tenant's domains: a copy may be released only "
                                   "to the tenant's own addresses")
        deliveries.create(session, msg, address, DeliveryStatus.QUEUED, route=route)
        _event(session, msg, "released", f"by {actor} to another address: {address}")
        request_delivery_after_commit(session, cfg, msg.tenant_id, msg.id)
        return ReleaseResult(msg.id, msg.tenant_id, (address,), to=address)
    moved = deliveries.release_held(session, _held_rows(session, msg, rcpts))
    if not moved:
        raise ValidationError(f"message {msg.id} is no longer in the quarantine (released or deleted before)")
    released = tuple(r.rcpt for r in moved)
    _event(session, msg, "released", f"by {actor} to {', '.join(released)}")
    request_delivery_after_commit(session, cfg, msg.tenant_id, msg.id)
    _learn_after_commit(session, cfg, msg, spam=False, actor=f"{actor} (released)")
    return ReleaseResult(msg.id, msg.tenant_id, released)


def delete(session: Session, message_id: str, *, actor: str, rcpts: Sequence[str] | None = None,
           cfg: Config | None = None) -> tuple[str, ...]:
    """Never deliver a held mail: its held rows (or those of ``rcpts``) become ``discarded``; returns their
    recipients. The mail itself stays until the purge, for the timeline. :class:`ValidationError` if none is held.
    With ``cfg``, deleting quarantined spam teaches the tenant's content model that it was spam."""
    msg = get(session, message_id, rcpts=rcpts)
    moved = deliveries.discard_held(session, _held_rows(session, msg, rcpts))
    if not moved:
        raise ValidationError(f"message {msg.id} is no longer in the quarantine (released or deleted before)")
    gone = tuple(r.rcpt for r in moved)
    _event(session, msg, "deleted", f"by {actor} for {', '.join(gone)}")
    if cfg is not None:
        _learn_after_commit(session, cfg, msg, spam=True, actor=f"{actor} (deleted)")
    return gone


def _learn_after_commit(session: Session, cfg: Config, msg: Message, *, spam: bool, actor: str) -> None:
    """A release from the spam quarantine (ham) or a deletion of quarantined spam (spam) is a learning signal: the
    worker learns it like a report once the caller commits. Virus and attachment holds say nothing about content."""
    if msg.quarantine_kind != "spam":
        return
    after_commit(session, lambda: enqueue_job(cfg, REPORT_JOB, msg.tenant_id, msg.id, spam, actor,
                                              description=f"learn {msg.id} as {'spam' if spam else 'ham'}"))


def _list_sender(session: Session, cfg: Config, msg: Message, kind: str, *, actor: str,
                 user_id: int | None) -> ListEntry:
    """Put the mail's sender on the recipient user's list (``user_id``) or, without one, on the tenant's."""
    value = lists.sender_of(msg.mail_from, msg.header_from)
    entry = lists.add_entry(session, kind=kind, value=value, value_type="address", user_id=user_id,
                            tenant_id=None if user_id is not None else msg.tenant_id,
                            comment=f"from quarantined message {msg.id}", created_by=actor)
    lists.reload_after_commit(session, cfg)
    return entry


def allow_sender_and_release(session: Session, cfg: Config, message_id: str, *, actor: str,
                             rcpts: Sequence[str] | None = None, user_id: int | None = None,
                             actor_is_admin: bool = False) -> tuple[ListEntry, ReleaseResult]:
    """Allow-list the sender (the user's own list with ``user_id``, else the tenant's) and release the mail.

    The ingresses reload lists after the caller commits.
    """
    result = release(session, cfg, message_id, actor=actor, rcpts=rcpts, actor_is_admin=actor_is_admin)
    entry = _list_sender(session, cfg, get(session, message_id), "allow", actor=actor, user_id=user_id)
    return entry, result


def block_sender_and_delete(session: Session, cfg: Config, message_id: str, *, actor: str,
                            rcpts: Sequence[str] | None = None,
                            user_id: int | None = None) -> tuple[ListEntry, tuple[str, ...]]:
    """Block-list the sender (the user's own list with ``user_id``, else the tenant's) and delete the mail.

    The ingresses reload lists after the caller commits.
    """
    gone = delete(session, message_id, actor=actor, rcpts=rcpts, cfg=cfg)
    entry = _list_sender(session, cfg, get(session, message_id), "block", actor=actor, user_id=user_id)
    return entry, gone


def report(session: Session, message_id: str, *, spam: bool, actor: str, mail: learning.MailLike,
           rcpts: Sequence[str] | None = None) -> str:
    """Train the tenant's Bayes and content-model delta (:mod:`tenants.learning`) with ``mail`` (the parsed raw mail
    of ``message_id``) as spam or ham; what it did.

    Each message trains once per class: reporting it again as the same class does nothing, and reporting it as the
    other class first takes back the earlier training. Works on any message of the tenant, held or delivered. The
    ``tenants`` package cannot parse mail the way the ingress does (``smtp.mime``), so the web asks for this with
    :func:`request_report` and the worker runs it (``worker.jobs.report``).
    """
    msg = load(session, Message, message_id)
    if rcpts is not None:
        _own(session, msg, rcpts)
    label = "spam" if spam else "ham"
    last = session.scalar(select(Event.kind).where(Event.message_id == msg.id,
                                                   Event.kind.in_(tuple(TRAINED_EVENT.values())))
                          .order_by(Event.id.desc()).limit(1))
    if last == TRAINED_EVENT[spam]:
        return f"already trained as {label}"
    if last == TRAINED_EVENT[not spam]:
        untrain(session, msg.tenant_id, [mail], spam=not spam)
    train(session, msg.tenant_id, [mail], spam=spam)
    learning.learn(session, msg.tenant_id, mail, spam=spam)
    _event(session, msg, TRAINED_EVENT[spam], f"reported as {label} by {actor}")
    return f"trained as {label}" + (" (the earlier training was taken back)" if last else "")


def _own(session: Session, msg: Message, rcpts: Sequence[str]) -> None:
    if session.scalar(select(Delivery.id).where(Delivery.message_id == msg.id, rcpt_in(Delivery.rcpt, rcpts))
                      .limit(1)) is None:
        raise NotFound(f"Message {msg.id} not found")


def request_report(session: Session, cfg: Config, message_id: str, *, spam: bool, actor: str,
                   rcpts: Sequence[str] | None = None) -> None:
    """Ask the worker to :func:`report` a message once the caller commits (checks access now)."""
    msg = load(session, Message, message_id)
    if rcpts is not None:
        _own(session, msg, rcpts)
    after_commit(session, lambda: enqueue_job(cfg, REPORT_JOB, msg.tenant_id, msg.id, spam, actor,
                                              description=f"report {msg.id} as {'spam' if spam else 'ham'}"))


def mark_seen(session: Session, message_id: str, user_email: str, *, rcpts: Sequence[str] | None = None) -> None:
    """Record that a person opened the mail (access audit, and "seen by" in shared quarantines)."""
    tracking.record_view(session, get(session, message_id, rcpts=rcpts), user_email)


def seen_by(session: Session, message_id: str) -> list[tuple[str, datetime]]:
    """(e-mail, last time) of everyone who opened the mail, most recent first."""
    last = func.max(MessageView.at)
    rows = session.execute(select(MessageView.user_email, last).where(MessageView.message_id == message_id)
                           .group_by(MessageView.user_email).order_by(last.desc()))
    return [(email, at if isinstance(at, datetime) else datetime.fromisoformat(str(at))) for email, at in rows]


# --- bulk -----------------------------------------------------------------------------------------------------------

R = TypeVar("R")


def _bulk(ids: Sequence[str], act: Callable[[str], R], show: Callable[[R], str]) -> BulkResult:
    out = BulkResult()
    for message_id in dict.fromkeys(ids):
        try:
            out.done[message_id] = show(act(message_id))
        except MailwardError as exc:
            out.failed[message_id] = str(exc)
    return out


def release_many(session: Session, cfg: Config, ids: Sequence[str], *, actor: str,
                 rcpts: Sequence[str] | None = None, actor_is_admin: bool = False) -> BulkResult:
    """:func:`release` for each id; failures are reported per id and do not stop the others."""
    return _bulk(ids, lambda i: release(session, cfg, i, actor=actor, rcpts=rcpts, actor_is_admin=actor_is_admin),
                 str)


def delete_many(session: Session, ids: Sequence[str], *, actor: str, rcpts: Sequence[str] | None = None,
                cfg: Config | None = None) -> BulkResult:
    """:func:`delete` for each id; failures are reported per id and do not stop the others."""
    return _bulk(ids, lambda i: delete(session, i, actor=actor, rcpts=rcpts, cfg=cfg),
                 lambda r: f"deleted for {', '.join(r)}")


# --- digest links ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActionOutcome:
    """What a click on a digest link did: ``done`` False when the link had been used before (``message`` says
    what it did then) or the action was not possible any more."""

    done: bool
    message: str
    claim: ActionClaim


def inspect_action(session: Session, cfg: Config, token: str) -> tuple[ActionClaim, str | None]:
    """What a digest link would do, and what it did if it was used already; changes nothing.

    For the GET of ``/q/action/<token>``: mail scanners (Safe Links and the like) open every link of a mail, so the
    page only asks "release this mail?" and a POST (:func:`redeem_action`) acts. Raises like :func:`redeem_action`.
    """
    claim = verify_action_token(cfg.resolve_secret_key(), token)
    return claim, spent_result(session, claim.jti)


def redeem_action(session: Session, cfg: Config, token: str) -> ActionOutcome:
    """Carry out a digest link's action once (the POST of ``/q/action/<token>``): verify, spend, act as the link's
    user.

    Raises :class:`~tenants.exceptions.TokenExpired` or :class:`~tenants.exceptions.TokenInvalid`; a replay
    answers "already done: <what the first click did>". Runs in the token's tenant scope by itself (the page is
    public). The caller commits.
    """
    claim = verify_action_token(cfg.resolve_secret_key(), token)
    with tenant_scope(claim.tenant_id):
        previous = spend(session, claim.jti, "in progress", tenant_id=claim.tenant_id)
        if previous is not None:
            return ActionOutcome(False, f"already done: {previous}", claim)
        try:
            result = _perform(session, cfg, claim)
            done = True
        except (NotFound, PermissionDenied, ValidationError) as exc:
            result, done = f"not possible: {exc}", False
        record_result(session, claim.jti, result)
    return ActionOutcome(done, result, claim)


def _perform(session: Session, cfg: Config, claim: ActionClaim) -> str:
    user = load(session, User, claim.user_id)
    if not user.active:
        raise PermissionDenied("this account is disabled")
    actor = f"{user.email} (digest link)"
    rcpts = list(claim.rcpts)
    if claim.action == "release":
        return str(release(session, cfg, claim.message_id, actor=actor, rcpts=rcpts))
    if claim.action == "delete":
        return f"deleted for {', '.join(delete(session, claim.message_id, actor=actor, rcpts=rcpts, cfg=cfg))}"
    msg = get(session, claim.message_id, rcpts=rcpts)
    kind = "allow" if claim.action == "allow" else "block"
    entry = _list_sender(session, cfg, msg, kind, actor=actor, user_id=user.id)
    try:  # the sender is listed even when the mail itself was acted on before
        act = (str(release(session, cfg, msg.id, actor=actor, rcpts=rcpts)) if kind == "allow"
               else f"deleted for {', '.join(delete(session, msg.id, actor=actor, rcpts=rcpts, cfg=cfg))}")
    except ValidationError:
        act = "the message was no longer in the quarantine"
    return f"{entry.value} {'allowed' if kind == 'allow' else 'blocked'}; {act}"
