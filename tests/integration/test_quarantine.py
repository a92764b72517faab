"""The quarantine service and CLI: search and keyset paging, detail, release (through the real ingress, worker and
sink), release to another address, delete, the virus rule, Bayes reports, "seen by", the purge, and isolation."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from smtp.mime import parse_mail
from tenants import quarantine as q
from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.lists import list_entries
from tenants.mail.bayes import stats
from tenants.models import Blob, Delivery, Event, Finding, Message, MessageView, UsedToken, User, utcnow
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.integration.test_verdicts import BROKEN, messages, send, set_policy
from tests.support.held import hold, raw_mail
from tests.support.servers import run_cli, wait_for
from worker.retention import purge

# --- search and paging ----------------------------------------------------------------------------------------------


@pytest.fixture
def held(cfg, world):
    """Seven held mails of Acme at known times (two share one timestamp), and one of Beta."""
    acme, beta = world["acme"].id, world["beta"].id
    base = utcnow() - timedelta(hours=10)
    ids = {
        "spam1": hold(cfg, acme, received_at=base, sender="a@junk.example", subject="Cheap pills", score=9),
        "spam2": hold(cfg, acme, received_at=base + timedelta(hours=1), sender="b@junk.example",
                      subject="Lottery WIN", score=12, rcpts=("bob@acme.test", "carol@acme.test")),
        "virus": hold(cfg, acme, kind="virus", received_at=base + timedelta(hours=2), sender="c@bad.example",
                      subject="Invoice", score=100),
        "attach": hold(cfg, acme, kind="attachment", received_at=base + timedelta(hours=3), sender="d@bad.example",
                       subject="Document 100%_done", score=3, rcpts=("carol@acme.test",)),
        "spam3": hold(cfg, acme, received_at=base + timedelta(hours=4), sender="e@junk.example",
                      subject="Pills again", score=8.5),
        "spam4": hold(cfg, acme, received_at=base + timedelta(hours=4), sender="f@junk.example",
                      subject="Tie", score=8.1),
        "spam5": hold(cfg, acme, received_at=base + timedelta(hours=5), sender="g@junk.example",
                      subject="Newest", score=20, rcpts=("Sales@acme2.test",)),
        "beta": hold(cfg, beta, received_at=base + timedelta(hours=6), rcpts=("dave@beta.test",)),
    }
    ids["base"] = base  # type: ignore[assignment]
    return ids


def _ids(items) -> list[str]:
    return [i.id for i in items]


def test_search_filters(session, world, held):
    acme = world["acme"].id
    with tenant_scope(acme):
        everything, cursor = q.search(session)
        assert cursor is None and held["beta"] not in _ids(everything) and len(everything) == 7
        assert set(_ids(q.search(session, kind="spam")[0])) == {held[k] for k in ("spam1", "spam2", "spam3",
                                                                                    "spam4", "spam5")}
        assert _ids(q.search(session, kind="virus")[0]) == [held["virus"]]
        assert set(_ids(q.search(session, rcpt="carol@acme.test")[0])) == {held["spam2"], held["attach"]}
        assert _ids(q.search(session, rcpt="sales@ACME2.test")[0]) == [held["spam5"]]
        mine = q.search(session, rcpts=["carol@acme.test"])[0]
        assert {i.id: i.rcpts for i in mine}[held["spam2"]] == ("carol@acme.test",)  # only the user's own rows
        assert q.search(session, rcpt="bob@acme.test", rcpts=["carol@acme.test"])[0] == []
        assert set(_ids(q.search(session, sender="bad.example")[0])) == {held["virus"], held["attach"]}
        assert _ids(q.search(session, text="100%_")[0]) == [held["attach"]]  # LIKE wildcards are literal
        assert _ids(q.search(session, text="lottery")[0]) == [held["spam2"]]
        assert set(_ids(q.search(session, min_score=12, max_score=50)[0])) == {held["spam2"], held["spam5"]}
        base = held["base"]
        window = q.search(session, since=base + timedelta(hours=1), until=base + timedelta(hours=3))[0]
        assert _ids(window) == [held["virus"], held["spam2"]]
        with pytest.raises(ValidationError):
            q.search(session, kind="ham")
        with pytest.raises(ValidationError):
            q.search(session, after="not-a-cursor")


def test_keyset_paging_newest_first_without_offset_or_count(cfg, session, world, held):
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement.upper(), parameters))

    engine = tdb.get_engine(cfg)
    event.listen(engine, "before_cursor_execute", record)
    try:
        pages = []
        cursor = None
        with tenant_scope(world["acme"].id):
            while True:
                items, cursor = q.search(session, limit=3, after=cursor)
                pages.append(_ids(items))
                if cursor is None:
                    break
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert len(set(flat)) == 7
    expected = [held[k] for k in ("spam5",)] + sorted([held["spam3"], held["spam4"]], reverse=True) + \
        [held[k] for k in ("attach", "virus", "spam2", "spam1")]
    assert flat == expected  # newest first; the two with one timestamp ordered by id, none lost between pages
    assert not any("COUNT(" in sql for sql, _ in statements)
    # SQLite's dialect always writes "LIMIT ? OFFSET ?"; the offset must stay 0 (PostgreSQL writes none).
    assert all(sql.endswith("LIMIT ? OFFSET ?") and params[-1] == 0 for sql, params in statements if "OFFSET" in sql)


# --- release through the real ingress, worker and sink ------------------------------------------------------------

def _run_worker(env) -> None:
    result = run_cli(["worker", "--burst"], env)
    assert result.returncode == 0, result.stderr


def test_release_with_the_cli_delivers_once_through_the_real_path(env, ingress, acme, sink, session):
    set_policy(env, "scores.MIME_DEFECT=9")
    send(env)
    (msg,) = wait_for(lambda: messages(session), 10, what="quarantined message")
    assert msg.quarantine_kind == "spam"
    listed = run_cli(["quarantine", "list", "Acme"], env)
    assert listed.stdout.startswith(f"{msg.id}\tspam\tbob@acme.test\tAlice <alice@sender.example>\tBroken report\t9")
    released = run_cli(["quarantine", "release", msg.id], env)
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == f"message {msg.id} released to bob@acme.test"
    _run_worker(env)
    got = sink.wait_count(1)
    assert got[0].rcpts == ["bob@acme.test"] and b"Subject: Broken report" in got[0].data
    _run_worker(env)  # nothing left to do: the row is delivered
    assert len(sink.messages) == 1
    session.rollback()
    with msp_scope():
        rows = session.scalars(select(Delivery).where(Delivery.message_id == msg.id)).all()
        kinds = session.scalars(select(Event.kind).where(Event.message_id == msg.id).order_by(Event.id)).all()
        detail = session.scalar(select(Event.detail).where(Event.message_id == msg.id, Event.kind == "released"))
    assert [(r.rcpt, r.status) for r in rows] == [("bob@acme.test", "delivered")]
    # A release from the spam quarantine is a learning signal (ham): the worker learns it beside the delivery.
    assert kinds[:3] == ["received", "scanned", "released"] and sorted(kinds[3:]) == ["delivered", "trained_ham"]
    assert detail == "by cli to bob@acme.test"
    again = run_cli(["quarantine", "release", msg.id], env)
    assert again.returncode == 1 and "no longer in the quarantine" in again.stderr
    assert "quarantine is empty" in run_cli(["quarantine", "list", "Acme"], env).stdout


def test_release_to_another_address_leaves_the_held_rows(env, ingress, acme, sink, session):
    set_policy(env, "scores.MIME_DEFECT=9")
    send(env)
    (msg,) = wait_for(lambda: messages(session), 10, what="quarantined message")
    released = run_cli(["quarantine", "release", msg.id, "--to", "Security@acme.test"], env)
    assert released.returncode == 0, released.stderr
    _run_worker(env)
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["security@acme.test"]
    session.rollback()
    with msp_scope():
        rows = {r.rcpt: r.status for r in session.scalars(select(Delivery).where(Delivery.message_id == msg.id))}
    assert rows == {"bob@acme.test": "quarantined", "security@acme.test": "delivered"}


def test_delete_discards_and_the_sweeper_never_delivers(env, cfg, acme, sink, session):
    mid = hold(cfg, acme.id)
    deleted = run_cli(["quarantine", "delete", mid], env)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"message {mid} deleted for bob@acme.test"
    _run_worker(env)
    with msp_scope():
        status = session.scalar(select(Delivery.status).where(Delivery.message_id == mid))
        kinds = session.scalars(select(Event.kind).where(Event.message_id == mid)).all()
    assert status == "discarded" and "deleted" in kinds and sink.messages == []
    with tenant_scope(acme.id):
        assert q.search(session)[0] == []
        assert _ids(q.search(session, held_only=False)[0]) == [mid]
        with pytest.raises(ValidationError):
            q.release(session, cfg, mid, actor="admin@acme.test", actor_is_admin=True)


def test_a_virus_is_released_by_admins_only(cfg, world, session):
    acme = world["acme"].id
    virus = hold(cfg, acme, kind="virus")
    with tenant_scope(acme):
        with pytest.raises(PermissionDenied, match="administrator"):
            q.release(session, cfg, virus, actor="user@acme.test", rcpts=["bob@acme.test"])
        bulk = q.release_many(session, cfg, [virus], actor="user@acme.test")
        assert bulk.failed == {virus: "a virus can only be released by an administrator"} and not bulk.done
        spam = hold(cfg, acme)
        with pytest.raises(PermissionDenied, match="another address"):
            q.release(session, cfg, spam, actor="user@acme.test", to="me@elsewhere.example")
        result = q.release(session, cfg, virus, actor="admin@acme.test", actor_is_admin=True)
        assert result.rcpts == ("bob@acme.test",)
        session.commit()


def test_users_act_only_on_their_own_rows(cfg, world, session):
    acme = world["acme"].id
    shared = hold(cfg, acme, rcpts=("bob@acme.test", "carol@acme.test"))
    other = hold(cfg, acme, rcpts=("carol@acme.test",))
    with tenant_scope(acme):
        with pytest.raises(NotFound):
            q.get(session, other, rcpts=["bob@acme.test"])
        with pytest.raises(NotFound):
            q.delete(session, other, actor="bob@acme.test", rcpts=["bob@acme.test"])
        result = q.release(session, cfg, shared, actor="bob@acme.test", rcpts=["BOB@acme.test"])
        assert result.rcpts == ("bob@acme.test",)
        session.commit()
        rows = dict(session.execute(select(Delivery.rcpt, Delivery.status).where(Delivery.message_id == shared)).all())
    assert rows == {"bob@acme.test": "queued", "carol@acme.test": "quarantined"}


def test_detail_shows_findings_attachments_and_a_safe_preview(cfg, world, session):
    import io
    import zipfile
    from email.message import EmailMessage

    acme = world["acme"].id
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("run.exe", b"MZ" + b"\0" * 64)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "x@junk.example", "bob@acme.test", "Your invoice"
    mail.set_content('<p onclick="steal()">Pay <a href="https://evil.example/pay">here</a><img src="https://t.example/p">'
                     '<script>alert(1)</script></p>', subtype="html")
    mail.add_attachment(buf.getvalue(), maintype="application", subtype="pdf", filename="invoice.pdf")
    mid = hold(cfg, acme, data=mail.as_bytes(), findings=[("BAYES_99", 3.5, "p=0.99"), ("DKIM_VALID", -0.5, ""),
                                                          ("MIME_DEFECT", 6.0, "broken")])
    with tenant_scope(acme):
        d = q.detail(session, mid)
        q.mark_seen(session, mid, "Admin@acme.test")
        q.mark_seen(session, mid, "admin@acme.test")  # within minutes: one "seen" row
        q.mark_seen(session, mid, "user@acme.test", rcpts=["bob@acme.test"])
        session.commit()
        seen = q.seen_by(session, mid)
    assert (d.positive_score, d.negative_score) == (9.5, -0.5)
    assert [f.symbol for f in d.findings] == ["MIME_DEFECT", "BAYES_99", "DKIM_VALID"]
    assert d.rcpts == [("bob@acme.test", "quarantined")]
    assert ("Subject", "Your invoice") in d.headers
    (att,) = d.attachments
    assert (att.filename, att.declared_type, att.real_type) == ("invoice.pdf", "application/pdf", "application/zip")
    assert d.preview.kind == "html"
    assert "<script" not in d.preview.html and "onclick" not in d.preview.html and "href" not in d.preview.html
    assert 'title="https://evil.example/pay"' in d.preview.html and "mw-img-blocked" in d.preview.html
    assert [k for _, k, _ in d.events] == ["received", "scanned"]
    assert sorted(e for e, _ in seen) == ["admin@acme.test", "user@acme.test"]
    with msp_scope():
        assert session.scalar(select(Event.id).where(Event.kind == "seen")) is None


def test_allow_sender_and_release_and_block_sender_and_delete(cfg, world, session):
    acme = world["acme"].id
    with msp_scope():
        bob = session.scalars(select(User).where(User.email == "user@acme.test")).one()
    one = hold(cfg, acme, sender="news@shop.example", rcpts=("user@acme.test",))
    two = hold(cfg, acme, sender="spam@junk.example", rcpts=("user@acme.test",))
    with tenant_scope(acme):
        entry, result = q.allow_sender_and_release(session, cfg, one, actor="user@acme.test",
                                                   rcpts=["user@acme.test"], user_id=bob.id)
        assert (entry.kind, entry.value, entry.user_id) == ("allow", "news@shop.example", bob.id)
        assert result.rcpts == ("user@acme.test",)
        entry2, gone = q.block_sender_and_delete(session, cfg, two, actor="admin@acme.test")
        assert (entry2.kind, entry2.value, entry2.user_id, entry2.tenant_id) == ("block", "spam@junk.example",
                                                                                 None, acme)
        assert gone == ("user@acme.test",)
        session.commit()
        assert [e.value for e in list_entries(session, user_id=bob.id)] == ["news@shop.example"]


def test_report_trains_once_per_class_and_retrains_on_change(cfg, world, session):
    from worker.jobs import report

    acme = world["acme"].id
    mid = hold(cfg, acme)
    assert report(acme, mid, True, "admin@acme.test") == "trained as spam"
    assert report(acme, mid, True, "admin@acme.test") == "already trained as spam"
    session.rollback()
    assert (stats(session, acme).nspam, stats(session, acme).nham) == (1, 0)
    assert report(acme, mid, False, "user@acme.test").startswith("trained as ham (the earlier training")
    session.rollback()
    learnt = stats(session, acme)
    assert (learnt.nspam, learnt.nham) == (0, 1)
    with tenant_scope(acme):
        # The tenants package takes an already parsed mail; the worker job parses what the ingress would have.
        assert q.report(session, mid, spam=False, actor="x", mail=parse_mail(raw_mail())) == "already trained as ham"


def test_report_is_queued_after_commit_and_runs_in_the_worker(env, cfg, world, session):
    from tenants.platform.redisconn import redis_client

    acme = world["acme"].id
    mid = hold(cfg, acme, rcpts=("user@acme.test",))
    with tenant_scope(acme):
        with pytest.raises(NotFound):
            q.request_report(session, cfg, mid, spam=True, actor="carol@acme.test", rcpts=["carol@acme.test"])
        q.request_report(session, cfg, mid, spam=True, actor="user@acme.test", rcpts=["user@acme.test"])
        assert redis_client(cfg).llen("rq:queue:default") == 0  # nothing before the commit
        session.commit()
    assert redis_client(cfg).llen("rq:queue:default") == 1
    run = run_cli(["worker", "--burst"], env)
    assert run.returncode == 0, run.stderr
    session.rollback()
    assert stats(session, acme).nspam == 1


def test_work_asked_for_is_dropped_on_rollback(cfg, world, session):
    from tenants.platform.redisconn import redis_client

    acme = world["acme"].id
    mid = hold(cfg, acme)
    with tenant_scope(acme):
        q.release(session, cfg, mid, actor="admin@acme.test", actor_is_admin=True)
        session.rollback()
        session.execute(select(Message.id)).all()
        session.commit()
    assert redis_client(cfg).llen("rq:queue:delivery") == 0
    with tenant_scope(acme):
        assert _ids(q.search(session)[0]) == [mid]  # still held


# --- isolation ------------------------------------------------------------------------------------------------------

def test_another_tenants_quarantine_is_not_found(cfg, world, session):
    """Attack: a tenant admin guesses another tenant's message ids to read or release its quarantine."""
    acme, beta = world["acme"].id, world["beta"].id
    theirs = hold(cfg, beta, rcpts=("dave@beta.test",))
    with tenant_scope(acme):
        assert theirs not in _ids(q.search(session, held_only=False)[0])
        for act in (lambda: q.get(session, theirs), lambda: q.detail(session, theirs),
                    lambda: q.release(session, cfg, theirs, actor="admin@acme.test", actor_is_admin=True),
                    lambda: q.delete(session, theirs, actor="admin@acme.test"),
                    lambda: q.mark_seen(session, theirs, "admin@acme.test")):
            with pytest.raises(NotFound):
                act()
        assert q.release_many(session, cfg, [theirs], actor="a", actor_is_admin=True).failed == {
            theirs: f"Message {theirs} not found"}
    with tenant_scope(beta):
        assert _ids(q.search(session)[0]) == [theirs]


def test_a_delivered_message_is_not_in_the_quarantine(env, ingress, acme, sink, session):
    send(env)
    sink.wait_count(1)
    (msg,) = messages(session)
    with tenant_scope(acme.id), pytest.raises(NotFound):
        q.get(session, msg.id)
    assert BROKEN in sink.messages[0].data


# --- retention ------------------------------------------------------------------------------------------------------

def test_purge_removes_expired_mail_with_everything_and_reports_counts(cfg, world, session):
    acme, beta = world["acme"].id, world["beta"].id
    now = utcnow()
    old = [hold(cfg, acme, received_at=now - timedelta(days=20), expires_in=timedelta(days=14)) for _ in range(3)]
    old_virus = hold(cfg, acme, kind="virus", received_at=now - timedelta(days=40), expires_in=timedelta(days=30))
    old_beta = hold(cfg, beta, kind="attachment", rcpts=("dave@beta.test",), received_at=now - timedelta(days=31),
                    expires_in=timedelta(days=30))
    fresh = hold(cfg, acme, received_at=now - timedelta(days=1))
    released_late = hold(cfg, acme, received_at=now - timedelta(days=20))
    with tenant_scope(acme):
        q.release(session, cfg, released_late, actor="admin@acme.test")
        q.mark_seen(session, old[0], "admin@acme.test")
        session.commit()
    with tdb.session_scope(cfg) as s:
        s.add(UsedToken(jti="ancient", tenant_id=acme, used_at=now - timedelta(days=30), result="x"))
        s.add(UsedToken(jti="recent", tenant_id=acme, used_at=now - timedelta(days=1), result="x"))

    report = purge(cfg, batch=2)
    assert report == {"Acme": {"spam": 3, "virus": 1}, "Beta": {"attachment": 1}}
    session.rollback()
    gone = old + [old_virus, old_beta]
    with msp_scope():
        assert set(session.scalars(select(Message.id))) == {fresh, released_late}  # pending delivery: kept
        for model in (Delivery, Event, Finding, MessageView):
            assert session.scalar(select(model.id).where(model.message_id.in_(gone))) is None
        assert set(session.scalars(select(Blob.id))) == {fresh, released_late}
        assert set(session.scalars(select(UsedToken.jti))) == {"recent"}
    assert purge(cfg) == {}


def test_concurrent_releases_release_once(cfg, world):
    """Two admins press release at the same moment: one wins, the other is told it is gone."""
    acme = world["acme"].id
    mid = hold(cfg, acme)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def click() -> None:
        with tenant_scope(acme):
            s = tdb.session_factory(cfg)()
            try:
                barrier.wait()
                q.release(s, cfg, mid, actor="admin@acme.test", actor_is_admin=True)
                s.commit()
                outcomes.append("released")
            except ValidationError:
                s.rollback()
                outcomes.append("gone")
            finally:
                s.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["gone", "released"]
    with tdb.session_scope(cfg) as s, msp_scope():
        assert s.scalars(select(Event.kind).where(Event.message_id == mid, Event.kind == "released")).all() == [
            "released"]
