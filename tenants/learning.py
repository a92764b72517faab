"""Feedback learning of the content model: each tenant's own delta on top of the base model, and opt-in sharing.

A tenant's signals (a report as spam or not spam, a release from the spam quarantine, a deletion of quarantined spam,
``mailward bayes train``) each take one online step on that tenant's delta (:mod:`tenants.content.online`): no
retraining, one row per tenant, read and written in the tenant's scope like every tenant row. The portal shows how
much was learnt and when, and can reset it.

Sharing is opt-in per tenant. A shared report is kept as the mail's fingerprint (a hash of its normalised text), its
label and its hashed feature row. It reaches the MSP-level shared delta only when at least
``MAILWARD_SHARED_LEARNING_MIN_TENANTS`` distinct tenants reported the same fingerprint with the same label and none
reported it the other way (:func:`consider_sharing`), so one tenant, however many reports it files, cannot move
what every other tenant's mail is scored with. Each fingerprint is learnt into the shared delta once.

The ingress adds the shared delta to every tenant's score and each tenant's own delta to that tenant's only
(:mod:`smtp.checks.content`).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
from scipy.sparse import csr_matrix
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenants.content import features
from tenants.content.features import N_FEATURES, vectorize
from tenants.content.model import ContentModel, load_cached
from tenants.content.online import Delta, prune, update
from tenants.learning_models import ContentDelta, SharedDelta, SharedPromotion, SharedReport
from tenants.mail import bayes
from tenants.models import utcnow
from tenants.scope import current_scope

#: Most weights a tenant's delta keeps (the largest by magnitude); about 1 MB stored at most.
MAX_WEIGHTS = 50_000
#: Most weights of the MSP's shared delta.
MAX_SHARED_WEIGHTS = 200_000
#: A mail with less normalised text than this has no fingerprint and is never shared (too little to tell two
#: mails apart).
MIN_FINGERPRINT_TEXT = 40
#: The shared delta's one row.
SHARED_ROW = 1


class MailLike(bayes.MailLike, features.MailLike, Protocol):
    """A parsed mail as both learners read it (:class:`smtp.mime.ParsedMail`)."""


@dataclass(frozen=True)
class LearningStatus:
    """What a tenant's feedback learning holds, for the portal."""

    spam: int
    ham: int
    changed: int
    weights: int
    share: bool
    learned_at: datetime | None
    reset_at: datetime | None
    #: Reports of this tenant waiting for other tenants to agree, and those that reached the shared model.
    shared_waiting: int
    shared_promoted: int

    @property
    def learned(self) -> int:
        return self.spam + self.ham


@dataclass(frozen=True)
class Learnt:
    """What one learning step did: whether it changed the delta, and the fingerprint offered for sharing."""

    changed: bool
    shared: str | None


def fingerprint(mail: MailLike) -> str | None:
    """sha256 of the mail's lower-cased, white-space-normalised text (its HTML's when it has no plain text); None
    when that text is too short to tell mails apart."""
    text = " ".join((mail.text or mail.html_text or "").split()).lower()
    if len(text) < MIN_FINGERPRINT_TEXT:
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def pack_features(x: csr_matrix) -> bytes:
    """A one-row feature matrix from :func:`~tenants.content.features.vectorize` as bytes (its sorted indices; the
    values are all 1/sqrt(n))."""
    return zlib.compress(np.asarray(x.indices, dtype="<i4").tobytes())


def unpack_features(blob: bytes) -> csr_matrix:
    indices = np.frombuffer(zlib.decompress(blob), dtype="<i4").astype(np.int32)
    n = len(indices)
    values = np.full(n, 1.0 / math.sqrt(n) if n else 0.0, dtype=np.float32)
    return csr_matrix((values, indices, np.array([0, n], dtype=np.int64)), shape=(1, N_FEATURES))


def _delta_of(blob: bytes | None) -> Delta | None:
    return Delta.loads(blob) if blob else None


def _row(session: Session, tenant_id: int, *, lock: bool = False) -> ContentDelta:
    """The tenant's row, made when missing (the caller commits)."""
    query = select(ContentDelta).where(ContentDelta.tenant_id == tenant_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        row = ContentDelta(tenant_id=tenant_id, delta=b"", spam=0, ham=0, changed=0, share=False, version=0)
        session.add(row)
        session.flush()
    return row


def tenant_delta(session: Session, tenant_id: int) -> tuple[int, Delta | None]:
    """(version, delta) of a tenant; (0, None) when it has learnt nothing."""
    found = session.execute(select(ContentDelta.version, ContentDelta.delta)
                            .where(ContentDelta.tenant_id == tenant_id)).first()
    return (0, None) if found is None else (found.version, _delta_of(found.delta))


def tenant_version(session: Session, tenant_id: int) -> int:
    """The version of a tenant's delta alone (cheap: the ingress asks this before reloading)."""
    return session.scalar(select(ContentDelta.version).where(ContentDelta.tenant_id == tenant_id)) or 0


def shared_delta(session: Session) -> tuple[int, Delta | None]:
    """(version, delta) of the MSP's shared delta; (0, None) before anything was shared."""
    found = session.execute(select(SharedDelta.version, SharedDelta.delta).where(SharedDelta.id == SHARED_ROW)).first()
    return (0, None) if found is None else (found.version, _delta_of(found.delta))


def shared_version(session: Session) -> int:
    return session.scalar(select(SharedDelta.version).where(SharedDelta.id == SHARED_ROW)) or 0


def learn(session: Session, tenant_id: int, mail: MailLike, *, spam: bool, base: ContentModel | None = None) -> Learnt:
    """One labelled mail into the tenant's delta; offered for sharing when the tenant opted in. The caller commits,
    then calls :func:`consider_sharing` with :attr:`Learnt.shared` in the MSP's scope."""
    base = base if base is not None else load_cached()
    x = vectorize([mail])
    _, shared = shared_delta(session)
    offset = shared.dot(x) if shared is not None else 0.0
    row = _row(session, tenant_id, lock=True)
    delta = _delta_of(row.delta) or Delta()
    steps = delta.updates
    update(base, delta, x, spam=spam, offset=offset)
    prune(delta, MAX_WEIGHTS)
    changed = delta.updates > steps
    row.delta = delta.dumps()
    row.spam += int(spam)
    row.ham += int(not spam)
    row.changed += int(changed)
    row.version += 1
    row.learned_at = utcnow()
    offered = fingerprint(mail) if row.share else None
    if offered is not None:
        report = session.scalar(select(SharedReport).where(SharedReport.tenant_id == tenant_id,
                                                           SharedReport.fingerprint == offered))
        if report is None:
            session.add(SharedReport(tenant_id=tenant_id, fingerprint=offered, spam=spam, features=pack_features(x)))
        else:  # the tenant changed its mind: its latest word counts
            report.spam = spam
            report.created_at = utcnow()
    return Learnt(changed, offered)


def status(session: Session, tenant_id: int) -> LearningStatus:
    """How much the tenant's delta learnt, whether it shares, and how its shared reports fared."""
    row = session.scalar(select(ContentDelta).where(ContentDelta.tenant_id == tenant_id))
    delta = _delta_of(row.delta) if row is not None else None
    waiting = promoted = 0
    if row is not None and row.share:
        fingerprints = select(SharedReport.fingerprint).where(SharedReport.tenant_id == tenant_id)
        promoted = session.scalar(select(func.count()).select_from(SharedPromotion)
                                  .where(SharedPromotion.fingerprint.in_(fingerprints))) or 0
        waiting = (session.scalar(select(func.count()).select_from(SharedReport)
                                  .where(SharedReport.tenant_id == tenant_id)) or 0) - promoted
    if row is None:
        return LearningStatus(0, 0, 0, 0, False, None, None, 0, 0)
    return LearningStatus(row.spam, row.ham, row.changed, len(delta.weights) if delta else 0, row.share,
                          row.learned_at, row.reset_at, waiting, promoted)


def reset(session: Session, tenant_id: int) -> None:
    """Forget what the tenant's delta learnt (its mail is scored by the base and shared model again), and withdraw
    its shared reports that have not reached the shared model."""
    row = _row(session, tenant_id, lock=True)
    row.delta, row.spam, row.ham, row.changed = b"", 0, 0, 0
    row.version += 1
    row.reset_at = utcnow()
    session.execute(delete(SharedReport).where(SharedReport.tenant_id == tenant_id))


def set_sharing(session: Session, tenant_id: int, share: bool) -> None:
    """Opt in to (or out of) sharing reports with the MSP's model; opting out withdraws the waiting reports."""
    row = _row(session, tenant_id, lock=True)
    row.share = share
    if not share:
        session.execute(delete(SharedReport).where(SharedReport.tenant_id == tenant_id))


def consider_sharing(session: Session, fingerprint_: str, *, min_tenants: int,
                     base: ContentModel | None = None) -> bool:
    """Learn a fingerprint into the shared delta when ``min_tenants`` distinct tenants reported it with one label and
    none with the other; True when it did. MSP scope (it counts across tenants); the caller commits."""
    if not current_scope().is_msp:
        raise PermissionError("consider_sharing counts reports across tenants: run it in the MSP's scope")
    if min_tenants < 2:
        raise ValueError("sharing needs at least two distinct tenants to agree")
    if session.get(SharedPromotion, fingerprint_) is not None:
        return False
    votes = dict(session.execute(select(SharedReport.spam, func.count(func.distinct(SharedReport.tenant_id)))
                                 .where(SharedReport.fingerprint == fingerprint_).group_by(SharedReport.spam)).all())
    spam_votes, ham_votes = votes.get(True, 0), votes.get(False, 0)
    if spam_votes and ham_votes:
        return False  # the tenants disagree: nobody's word reaches the others
    label, agreeing = (True, spam_votes) if spam_votes else (False, ham_votes)
    if agreeing < min_tenants:
        return False
    features = session.scalar(select(SharedReport.features).where(SharedReport.fingerprint == fingerprint_,
                                                                  SharedReport.spam.is_(label)).limit(1))
    if features is None:
        return False
    try:
        with session.begin_nested():
            session.add(SharedPromotion(fingerprint=fingerprint_, spam=label, tenants=agreeing))
    except IntegrityError:
        return False  # another worker promoted it a moment ago
    row = session.scalar(select(SharedDelta).where(SharedDelta.id == SHARED_ROW).with_for_update())
    if row is None:
        row = SharedDelta(id=SHARED_ROW, delta=b"", learned=0, version=0)
        session.add(row)
    delta = _delta_of(row.delta) or Delta()
    update(base if base is not None else load_cached(), delta, unpack_features(features), spam=label)
    prune(delta, MAX_SHARED_WEIGHTS)
    row.delta = delta.dumps()
    row.learned = (row.learned or 0) + 1
    row.version = (row.version or 0) + 1
    row.updated_at = utcnow()
    return True


def shared_status(session: Session) -> tuple[int, int, datetime | None]:
    """(mails learnt into the shared delta, reports waiting for agreement, last change) for the MSP console."""
    found = session.execute(select(SharedDelta.learned, SharedDelta.updated_at)
                            .where(SharedDelta.id == SHARED_ROW)).first()
    waiting = session.scalar(select(func.count(func.distinct(SharedReport.fingerprint)))
                             .where(SharedReport.fingerprint.not_in(select(SharedPromotion.fingerprint)))) or 0
    return (found.learned, waiting, found.updated_at) if found is not None else (0, waiting, None)
