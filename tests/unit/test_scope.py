"""Tenant isolation in the data layer: a tenant scope cannot read, list, count, update or delete others' rows."""

from __future__ import annotations

import pytest
from sqlalchemy import column, delete, func, insert, select, table, text, update

from tenants.exceptions import NotFound, TenantScopeError
from tenants.models import Delivery, Domain, Event, Message, User
from tenants.platform import db as tdb
from tenants.scope import RAW_SQL, load, msp_scope, raw_sql, tenant_scope
from tenants.services import create_user
from tests.support.held import hold


@pytest.fixture
def two_tenants(factory):
    a = factory.tenant("Acme", ("acme.test", "acme2.test"))
    b = factory.tenant("Beta", ("beta.test",))
    return a, b


def test_select_list_and_count_see_only_own_rows(session, two_tenants):
    a, b = two_tenants
    with tenant_scope(a.id):
        names = session.scalars(select(Domain.name).order_by(Domain.name)).all()
        assert names == ["acme.test", "acme2.test"]
        assert session.scalar(select(func.count()).select_from(Domain)) == 2
        assert session.scalars(select(Domain).where(Domain.name == "beta.test")).first() is None
    with tenant_scope(b.id):
        assert session.scalars(select(Domain.name)).all() == ["beta.test"]
    with msp_scope():
        assert session.scalar(select(func.count()).select_from(Domain)) == 3


def test_load_by_id_of_other_tenant_is_not_found_even_from_identity_map(session, two_tenants):
    """Session.get can answer from the identity map without a query; load() must still refuse."""
    a, b = two_tenants
    with msp_scope():
        beta_domain = session.scalars(select(Domain).where(Domain.name == "beta.test")).one()
    with tenant_scope(a.id):
        with pytest.raises(NotFound):
            load(session, Domain, beta_domain.id)
    with tenant_scope(b.id):
        assert load(session, Domain, beta_domain.id).name == "beta.test"


def test_bulk_update_and_delete_cannot_touch_other_tenant(session, two_tenants):
    a, b = two_tenants
    with tenant_scope(a.id):
        res = session.execute(update(Domain).values(transport_port=2525).execution_options(synchronize_session=False))
        assert res.rowcount == 2
        res = session.execute(delete(Domain).where(Domain.name == "beta.test")
                              .execution_options(synchronize_session=False))
        assert res.rowcount == 0
        session.commit()
    with msp_scope():
        beta = session.scalars(select(Domain).where(Domain.name == "beta.test")).one()
        assert beta.transport_port == 25


def test_orm_update_of_loaded_other_tenant_row_is_refused(session, two_tenants):
    a, b = two_tenants
    with msp_scope():
        beta = session.scalars(select(Domain).where(Domain.name == "beta.test")).one()
    with tenant_scope(a.id):
        beta.transport_port = 9999
        with pytest.raises(TenantScopeError):
            session.flush()
    session.rollback()


def test_orm_delete_of_other_tenant_row_is_refused(session, two_tenants):
    a, b = two_tenants
    with msp_scope():
        beta = session.scalars(select(Domain).where(Domain.name == "beta.test")).one()
    with tenant_scope(a.id):
        session.delete(beta)
        with pytest.raises(TenantScopeError):
            session.flush()
    session.rollback()


def test_insert_is_stamped_with_scope_tenant_and_cannot_claim_another(session, two_tenants):
    a, b = two_tenants
    with tenant_scope(a.id):
        d = Domain(name="new.test", transport_host="127.0.0.1", transport_port=25)
        session.add(d)
        session.flush()
        assert d.tenant_id == a.id
        session.add(Domain(name="sneaky.test", tenant_id=b.id, transport_host="h", transport_port=25))
        with pytest.raises(TenantScopeError):
            session.flush()
    session.rollback()


def test_moving_a_row_to_another_tenant_is_refused(session, two_tenants):
    a, b = two_tenants
    with tenant_scope(a.id):
        d = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        d.tenant_id = b.id
        with pytest.raises(TenantScopeError):
            session.flush()
    session.rollback()


def test_query_without_scope_raises(session, two_tenants):
    with pytest.raises(TenantScopeError):
        session.scalars(select(Domain)).all()
    with pytest.raises(TenantScopeError):
        session.scalars(select(Message)).all()


def test_relationship_loads_are_filtered_too(session, two_tenants, cfg):
    """A join or relationship from a tenant's row never pulls in another tenant's rows."""
    from smtp.mailstore import NewMessage, store_message

    a, b = two_tenants
    with tenant_scope(a.id):
        msg = store_message(session, NewMessage(tenant_id=a.id, queue_id="Q1", mail_from="x@ext.test",
                                                rcpts=["u@acme.test"], data=b"Subject: a\r\n\r\nx\r\n"))
        session.commit()
        mid = msg.id
    with tenant_scope(b.id):
        assert session.scalars(select(Delivery).join(Message)).all() == []
        assert session.scalars(select(Event)).all() == []
        with pytest.raises(NotFound):
            load(session, Message, mid)
    session.expunge_all()
    with tenant_scope(a.id):
        m = load(session, Message, mid)
        assert [d.rcpt for d in m.deliveries] == ["u@acme.test"]


def test_msp_users_and_tenant_users_are_scoped(session, two_tenants):
    a, b = two_tenants
    with msp_scope():
        create_user(session, "admin@msp.test", "msp_admin", None, "long enough password")
        create_user(session, "it@acme.test", "tenant_admin", a, "long enough password")
        create_user(session, "it@beta.test", "tenant_admin", b, "long enough password")
        session.commit()
    with tenant_scope(a.id):
        assert session.scalars(select(User.email)).all() == ["it@acme.test"]


# --- Core and text() statements, which the ORM's tenant filter does not reach ---------------------------------------

MESSAGE = Message.__table__


@pytest.fixture
def held_mail(cfg, two_tenants):
    """Three held mails of Acme and two of Beta; returns (acme id, beta id, one of Beta's message ids)."""
    a, b = two_tenants
    for n in range(3):
        hold(cfg, a.id, subject=f"Acme mail {n}")
    beta_ids = [hold(cfg, b.id, rcpts=("dave@beta.test",), subject=f"Beta secret {n}") for n in range(2)]
    return a.id, b.id, beta_ids[0]


def _subject(session, message_id: str) -> str:
    with msp_scope():
        return session.scalar(select(Message.subject).where(Message.id == message_id))


def test_core_select_on_a_tenant_table_in_a_tenant_scope_is_refused(session, held_mail):
    """Attack: code in tenant A's scope counts or lists mail with Core (``Message.__table__``, ``table("message")``,
    a bare table joined into an ORM query): the tenant filter never reaches it, so it would see tenant B's rows."""
    acme, _, _ = held_mail
    with tenant_scope(acme):
        assert session.scalar(select(func.count()).select_from(Message)) == 3  # the ORM: own rows only
        for stmt in (select(func.count()).select_from(MESSAGE),
                     select(MESSAGE.c.subject),
                     select(table("message", column("subject"))),
                     select(Domain.name).join(MESSAGE, MESSAGE.c.tenant_id == Domain.tenant_id),
                     select(Domain).where(Domain.tenant_id.in_(select(MESSAGE.c.tenant_id)))):
            with pytest.raises(TenantScopeError, match="message"):
                session.execute(stmt).all()


def test_text_in_a_tenant_scope_is_refused(session, held_mail):
    """Attack: raw SQL in tenant A's scope reads tenant B's subjects; its tables cannot be known, so any text() is
    refused there, through the session, on a bare connection, as a fragment of an ORM query and as driver SQL."""
    acme, _, _ = held_mail
    with tenant_scope(acme):
        with pytest.raises(TenantScopeError, match="raw SQL"):
            session.execute(text("SELECT subject FROM message")).all()
        with pytest.raises(TenantScopeError, match="raw SQL"):
            session.execute(select(Domain).where(text("1 = 1"))).all()
        with pytest.raises(TenantScopeError, match="raw SQL"):
            session.scalars(select(Message).from_statement(text("SELECT * FROM message"))).all()
        with pytest.raises(TenantScopeError, match="raw SQL"):
            session.connection().exec_driver_sql("SELECT subject FROM message").all()
        with pytest.raises(TenantScopeError, match="raw SQL"):
            session.execute(text("SELECT 1")).all()  # harmless, but raw SQL in a tenant scope needs a reason


def test_core_update_delete_and_insert_in_a_tenant_scope_are_refused_and_change_nothing(session, held_mail):
    """Attack: a Core UPDATE or DELETE in tenant A's scope rewrites tenant B's mail; a Core or bulk ORM INSERT
    (neither passes before_flush) plants a row in tenant B's name."""
    acme, beta, beta_mid = held_mail
    with tenant_scope(acme):
        with pytest.raises(TenantScopeError, match="message"):
            session.execute(update(MESSAGE).where(MESSAGE.c.id == beta_mid).values(subject="rewritten"))
        with pytest.raises(TenantScopeError, match="message"):
            session.execute(delete(MESSAGE).where(MESSAGE.c.id == beta_mid))
        with pytest.raises(TenantScopeError, match="domain"):
            session.execute(insert(Domain.__table__).values(tenant_id=beta, name="planted.test",
                                                            transport_host="h", transport_port=25))
        with pytest.raises(TenantScopeError, match="domain"):
            session.execute(insert(Domain), [{"tenant_id": beta, "name": "planted.test", "transport_host": "h",
                                              "transport_port": 25}])
    session.rollback()
    assert _subject(session, beta_mid) == "Beta secret 0"
    with msp_scope():
        assert session.scalar(select(func.count()).select_from(Message).where(Message.tenant_id == beta)) == 2
        assert session.scalars(select(Domain).where(Domain.name == "planted.test")).all() == []


def test_core_on_a_bare_connection_in_a_tenant_scope_is_refused(cfg, held_mail):
    """Attack: a statement run on a connection of the engine, not through a session, gets no filter at all; an ORM
    select run there is as unfiltered as Core."""
    acme, _, beta_mid = held_mail
    with tenant_scope(acme), tdb.get_engine(cfg).connect() as conn:
        for stmt in (select(MESSAGE.c.subject), select(Message.subject), text("SELECT subject FROM message"),
                     update(MESSAGE).where(MESSAGE.c.id == beta_mid).values(subject="rewritten")):
            with pytest.raises(TenantScopeError):
                conn.execute(stmt)
        conn.rollback()
    with msp_scope(), tdb.session_scope(cfg) as s:
        assert s.scalar(select(Message.subject).where(Message.id == beta_mid)) == "Beta secret 0"


def test_core_and_text_on_tenant_tables_without_a_scope_are_refused(session, held_mail):
    """No scope is no licence: Core on a tenant table raises as the ORM does, and so does raw SQL naming one;
    raw SQL that names none (a health check's SELECT 1) runs."""
    with pytest.raises(TenantScopeError, match="without a tenant scope"):
        session.execute(select(MESSAGE.c.subject)).all()
    with pytest.raises(TenantScopeError, match="without a tenant scope"):
        session.execute(text('SELECT subject FROM "message"')).all()
    assert session.execute(text("SELECT 1")).scalar() == 1


def test_core_and_text_run_in_the_msp_scope(session, held_mail):
    acme, beta, beta_mid = held_mail
    with msp_scope():
        assert session.scalar(select(func.count()).select_from(MESSAGE)) == 5
        subjects = session.scalars(text("SELECT subject FROM message ORDER BY subject")).all()
        assert subjects == ["Acme mail 0", "Acme mail 1", "Acme mail 2", "Beta secret 0", "Beta secret 1"]
        done = session.execute(update(MESSAGE).where(MESSAGE.c.id == beta_mid).values(subject="MSP edit"))
        assert done.rowcount == 1
    assert _subject(session, beta_mid) == "MSP edit"


def test_raw_sql_marked_with_a_reason_runs_in_a_tenant_scope(session, held_mail):
    """The escape hatch: a statement that says why it is raw (and filters by tenant itself) runs; no reason, no run."""
    acme, _, _ = held_mail
    own = text("SELECT subject FROM message WHERE tenant_id = :t ORDER BY subject")
    with tenant_scope(acme):
        marked = own.execution_options(**{RAW_SQL: "test: a statement the ORM cannot express"})
        assert session.scalars(marked, {"t": acme}).all() == ["Acme mail 0", "Acme mail 1", "Acme mail 2"]
        with raw_sql("test: a block of raw statements"):
            assert session.scalar(select(func.count()).select_from(MESSAGE).where(MESSAGE.c.tenant_id == acme)) == 3
        with pytest.raises(TenantScopeError, match="reason"):
            session.execute(own.execution_options(**{RAW_SQL: " "}), {"t": acme})
        with pytest.raises(TenantScopeError, match="reason"), raw_sql(""):
            pass
        with pytest.raises(TenantScopeError, match="raw SQL"):  # the mark does not outlive its block
            session.execute(own, {"t": acme})
