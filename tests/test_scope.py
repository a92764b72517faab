"""Tenant isolation in the data layer: a tenant scope cannot read, list, count, update or delete others' rows."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update

from tenants.exceptions import NotFound, TenantScopeError
from tenants.models import Delivery, Domain, Event, Message, User
from tenants.scope import load, msp_scope, tenant_scope
from tenants.services import create_user


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
    from smtp.queue import NewMessage, store_message

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
