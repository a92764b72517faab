"""Feedback learning of the content model: each tenant's own delta (reports, releases, deletions), isolation between
tenants, the reset, the opt-in sharing and its agreement rule, and the portal page."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from smtp.checks.base import CheckContext, Stage
from smtp.checks.content import ContentCheck
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from tenants import learning
from tenants import quarantine as q
from tenants.learning_models import SharedDelta, SharedReport
from tenants.models import AuditEntry
from tenants.platform import db as tdb
from tenants.platform.config import Config
from tenants.platform.redisconn import redis_client
from tenants.policy import Policy
from tenants.scope import msp_scope, tenant_scope
from tests.support.held import hold, raw_mail
from tests.support.servers import run_cli
from tests.support.web import post_form, sign_in, text

#: Text long enough to have a fingerprint, and mail the shipped model reads as a marketing mail.
CAMPAIGN = ("Dear friend, our exclusive offer ends tonight: order the premium package now and save 80 percent. "
            "Click the link below to claim your discount before it expires. Unsubscribe at any time.\n")
NEWSLETTER = ("Hello team, the minutes of Tuesday's planning meeting are attached below. Please check the action "
              "items assigned to you and reply with corrections before Friday. Thanks, Maria\n")


def mail(body: str = CAMPAIGN, subject: str = "Your exclusive offer") -> bytes:
    return raw_mail("offers@shop.example", subject, "bob@acme.test", body)


def scores(cfg: Config, raw: bytes, tenant_ids: list[int]) -> dict[int | None, tuple[str, str]]:
    """The content check's (symbol, reason) per tenant (None: one finding for all)."""
    check = ContentCheck(cfg)
    ctx = CheckContext(cfg=cfg, client_ip="192.0.2.25", helo="mail.shop.example", mail_from="offers@shop.example",
                       rcpts=["bob@acme.test"], tenant_ids=tenant_ids, policies={t: Policy() for t in tenant_ids},
                       mail=parse_mail(raw))
    asyncio.run(run_stage([check], ctx, Stage.DATA))
    return {f.tenant_id: (f.symbol, f.reason) for f in ctx.findings}


def log_odds(reason: str) -> float:
    return float(reason.split("log-odds ")[1].split(":")[0])


def learn(cfg: Config, tenant_id: int, raw: bytes, *, spam: bool) -> learning.Learnt:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        return learning.learn(s, tenant_id, parse_mail(raw), spam=spam)


def share(cfg: Config, tenant_id: int, on: bool = True) -> None:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        learning.set_sharing(s, tenant_id, on)


def consider(cfg: Config, fingerprint: str, min_tenants: int = 3) -> bool:
    with msp_scope(), tdb.session_scope(cfg) as s:
        return learning.consider_sharing(s, fingerprint, min_tenants=min_tenants)


def status(cfg: Config, tenant_id: int) -> learning.LearningStatus:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        return learning.status(s, tenant_id)


# --- a tenant's own learning ----------------------------------------------------------------------------------------

def test_a_report_changes_that_tenants_score_only(cfg, world):
    """Isolation: Acme reporting a mail as not spam lowers Acme's score of it; Beta's stays the base's."""
    acme, beta = world["acme"].id, world["beta"].id
    before = scores(cfg, mail(), [acme, beta])
    assert set(before) == {None}  # nobody has learnt anything: one finding for all
    from worker.jobs import report

    mid = hold(cfg, acme, data=mail())
    assert report(acme, mid, False, "admin@acme.test") == "trained as ham"
    after = scores(cfg, mail(), [acme, beta])
    assert set(after) == {acme, beta}
    assert "own learning" in after[acme][1] and "own learning" not in after[beta][1]
    assert log_odds(after[beta][1]) == pytest.approx(log_odds(before[None][1]), abs=1e-6)
    assert log_odds(after[acme][1]) < log_odds(before[None][1]) - 0.5
    got = status(cfg, acme)
    assert (got.learned, got.ham, got.spam, got.changed) == (1, 1, 0, 1) and got.learned_at is not None
    assert status(cfg, beta).learned == 0
    # Beta's scope cannot see Acme's delta.
    with tenant_scope(beta), tdb.session_scope(cfg) as s:
        assert learning.tenant_delta(s, acme) == (0, None)


def test_learning_moves_the_score_towards_the_label_and_reset_forgets(cfg, world):
    acme = world["acme"].id
    base = log_odds(scores(cfg, mail(NEWSLETTER, "Minutes"), [acme])[None][1])
    for _ in range(3):
        learn(cfg, acme, mail(NEWSLETTER, "Minutes"), spam=True)
    learnt = log_odds(scores(cfg, mail(NEWSLETTER, "Minutes"), [acme])[acme][1])
    assert learnt > base + 1.0
    got = status(cfg, acme)
    assert (got.spam, got.changed) == (3, 3) and got.weights > 0
    with tenant_scope(acme), tdb.session_scope(cfg) as s:
        learning.reset(s, acme)
    got = status(cfg, acme)
    assert (got.learned, got.changed, got.weights) == (0, 0, 0) and got.reset_at is not None
    again = scores(cfg, mail(NEWSLETTER, "Minutes"), [acme])
    assert set(again) == {None} and log_odds(again[None][1]) == pytest.approx(base, abs=1e-6)


def test_release_and_deletion_of_quarantined_spam_are_learnt_by_the_worker(env, cfg, world, session):
    acme = world["acme"].id
    released = hold(cfg, acme, data=mail())
    deleted = hold(cfg, acme, data=mail(NEWSLETTER, "Minutes"))
    virus = hold(cfg, acme, kind="virus", data=mail(subject="Invoice"))
    with tenant_scope(acme):
        q.release(session, cfg, released, actor="admin@acme.test", actor_is_admin=True)
        q.delete(session, deleted, actor="admin@acme.test", cfg=cfg)
        q.delete(session, virus, actor="admin@acme.test", cfg=cfg)  # a virus says nothing about content
        session.commit()
    assert redis_client(cfg).llen("rq:queue:default") == 2
    run = run_cli(["worker", "--burst"], env)
    assert run.returncode == 0, run.stderr
    got = status(cfg, acme)
    assert (got.ham, got.spam) == (1, 1)


# --- sharing --------------------------------------------------------------------------------------------------------

@pytest.fixture
def five(factory) -> list[int]:
    return [factory.tenant(f"T{i}", (f"t{i}.test",)).id for i in range(5)]


def shared_version(cfg: Config) -> int:
    with msp_scope(), tdb.session_scope(cfg) as s:
        return learning.shared_version(s)


def test_a_report_reaches_the_shared_model_only_when_enough_distinct_tenants_agree(cfg, five):
    t0, t1, t2, t3, t4 = five
    for t in (t0, t1, t2):
        share(cfg, t)
    raw = mail()
    # One tenant reporting again and again is still one tenant.
    for _ in range(5):
        fingerprint = learn(cfg, t0, raw, spam=True).shared
    assert fingerprint is not None and not consider(cfg, fingerprint)
    # A tenant that has not opted in does not count, and offers nothing.
    assert learn(cfg, t3, raw, spam=True).shared is None
    learn(cfg, t1, raw, spam=True)
    assert not consider(cfg, fingerprint) and shared_version(cfg) == 0
    learn(cfg, t2, raw, spam=True)
    assert consider(cfg, fingerprint) and shared_version(cfg) == 1
    assert not consider(cfg, fingerprint) and shared_version(cfg) == 1  # learnt once
    # Every tenant's score now carries the shared learning, t4's too, which never reported anything.
    symbol, reason = scores(cfg, raw, [t4])[None]
    assert "shared learning +" in reason
    got = status(cfg, t0)
    assert (got.shared_promoted, got.shared_waiting) == (1, 0)


def test_disagreement_keeps_a_mail_out_of_the_shared_model(cfg, five):
    t0, t1, t2, t3, _ = five
    for t in (t0, t1, t2, t3):
        share(cfg, t)
    raw = mail(NEWSLETTER, "Minutes")
    fingerprint = learn(cfg, t0, raw, spam=True).shared
    learn(cfg, t1, raw, spam=True)
    learn(cfg, t2, raw, spam=False)
    learn(cfg, t3, raw, spam=True)
    assert fingerprint is not None and not consider(cfg, fingerprint) and shared_version(cfg) == 0
    # The dissenter changes its mind: now four agree.
    learn(cfg, t2, raw, spam=True)
    assert consider(cfg, fingerprint)


def test_opting_out_or_resetting_withdraws_waiting_reports(cfg, five):
    t0, t1, *_ = five
    share(cfg, t0)
    share(cfg, t1)
    learn(cfg, t0, mail(), spam=True)
    learn(cfg, t1, mail(), spam=True)
    with msp_scope(), tdb.session_scope(cfg) as s:
        assert len(s.scalars(select(SharedReport)).all()) == 2
    share(cfg, t0, False)
    with tenant_scope(t1), tdb.session_scope(cfg) as s:
        learning.reset(s, t1)
    with msp_scope(), tdb.session_scope(cfg) as s:
        assert s.scalars(select(SharedReport)).all() == []
        assert s.scalars(select(SharedDelta)).all() == []


def test_the_agreement_rule_is_counted_in_the_msp_scope_only(cfg, world):
    with tenant_scope(world["acme"].id), tdb.session_scope(cfg) as s, pytest.raises(PermissionError):
        learning.consider_sharing(s, "0" * 64, min_tenants=3)
    with msp_scope(), tdb.session_scope(cfg) as s, pytest.raises(ValueError):
        learning.consider_sharing(s, "0" * 64, min_tenants=1)


# --- the portal -----------------------------------------------------------------------------------------------------

def test_the_portal_shows_the_learning_and_resets_it(cfg, world, web_app):
    acme = world["acme"].id
    learn(cfg, acme, mail(), spam=True)
    learn(cfg, acme, mail(NEWSLETTER, "Minutes"), spam=False)
    auditor = sign_in(web_app, "auditor@acme.test")
    page = text(auditor.get("/portal/learning"))
    assert "<strong>2</strong> (1 spam, 1 not spam)" in page and "Reset learning" not in page
    assert post_form(auditor, "/portal/learning", "/portal/learning/reset", {}).status_code == 404  # not theirs
    assert status(cfg, acme).learned == 2
    beta_admin = sign_in(web_app, "admin@beta.test")
    assert "<strong>0</strong> (0 spam, 0 not spam)" in text(beta_admin.get("/portal/learning"))

    admin = sign_in(web_app, "admin@acme.test")
    assert post_form(admin, "/portal/learning", "/portal/learning/sharing", {"share": "1"}).status_code == 302
    assert status(cfg, acme).share
    assert "Stop sharing" in text(admin.get("/portal/learning"))
    resp = post_form(admin, "/portal/learning", "/portal/learning/reset", {})
    assert resp.status_code == 302
    assert "the 2 mails learnt so far" in text(admin.get("/portal/learning"))
    got = status(cfg, acme)
    assert got.learned == 0 and got.share  # the reset keeps the sharing choice
    with msp_scope(), tdb.session_scope(cfg) as s:
        actions = [a for a, in s.execute(select(AuditEntry.action).where(AuditEntry.tenant_id == acme))]
    assert {"learning.sharing", "learning.reset"} <= set(actions)
    assert status(cfg, world["beta"].id).learned == 0


def test_bayes_train_on_the_command_line_teaches_the_content_model_too(env, cfg, world, tmp_path):
    folder = tmp_path / "spam"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.eml").write_bytes(mail(CAMPAIGN + f"ref {i}\n"))
    run = run_cli(["bayes", "train", "Acme", "--spam", str(folder)], env)
    assert run.returncode == 0, run.stderr
    assert "content model learnt 3 mails" in run.stdout
    assert status(cfg, world["acme"].id).spam == 3


def test_the_tenant_rows_belong_to_the_tenant(cfg, world: dict[str, Any]):
    """The data layer owns the isolation: a tenant scope cannot write another tenant's learning row."""
    from tenants.learning_models import ContentDelta
    from tenants.scope import TenantScopeError

    acme, beta = world["acme"].id, world["beta"].id
    learn(cfg, acme, mail(), spam=True)
    with tenant_scope(beta), tdb.session_scope(cfg) as s:
        assert s.scalars(select(ContentDelta)).all() == []
        s.add(ContentDelta(tenant_id=acme, delta=b"", spam=0, ham=0, changed=0, share=False, version=0))
        with pytest.raises(TenantScopeError):
            s.flush()
        s.rollback()
