"""The tenant egress policy (tenants.egress) and the pickle-free job queue, against real servers.

Security issue 9: a tenant's LDAP "Test connection" reached Mailward's own Redis and a crafted bind DN became Redis
commands; transports and call-ahead reached any host and port, and the timeline told open ports from closed ones;
RQ jobs were pickles, so a job written into Redis ran code in the worker. The installations here have no loopback
allowance (the ``env`` fixture is overridden below): whatever a tenant points Mailward at is held to the policy.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

import ldap3
import pytest
import redis
from rq import Queue
from sqlalchemy import select

from tenants import directory, recipients
from tenants.branding import brand_of
from tenants.egress import EgressPolicy, refused_reason
from tenants.exceptions import ConfigError
from tenants.models import Delivery, Domain, Event, RecipientVerification, Tenant
from tenants.platform import db as tdb
from tenants.platform.config import Config, set_config
from tenants.platform.jobs import DELIVER_JOB, SERIALIZER, enqueue_delivery, job_queue
from tenants.platform.redisconn import bump_policy_version, redis_client
from tenants.scope import msp_scope, tenant_scope
from tenants.services import add_domain, create_tenant
from tests.conftest import LOOPBACK_EGRESS
from tests.fixtures.api import Client, error, make_key
from tests.integration.test_ingress import client, make_mail
from tests.support.servers import RedisServer, free_port, run_cli, start_redis, wait_for
from tests.support.web import csrf_token, read, sign_in, text

#: What every refusal of an internal address says (the same whatever listens there).
NOT_ALLOWED = "is not allowed: Mailward does not connect to loopback, private, link-local or cloud metadata"
#: A bind DN of 266 bytes: its BER length (82 01 0a) ends a Redis inline command line, so the DN itself is the next
#: line; a 10-character password's length byte (0a) ends that one. Sent to Redis, it runs the EVAL.
ATTACK_DN_HEAD = "EVAL \"redis.call('set','pwned','1')\" 0 cn="
ATTACK_DN = ATTACK_DN_HEAD + "a" * (266 - len(ATTACK_DN_HEAD))
ATTACK_PASSWORD = "0123456789"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The test installation without the loopback allowance the other tests get; any port (so that what is refused
    here is the address), except in the tests of the port lists."""
    for name in LOOPBACK_EGRESS:
        env.pop(name, None)
    env["MAILWARD_TENANT_SMTP_PORTS"] = env["MAILWARD_TENANT_LDAP_PORTS"] = "1-65535"
    return env


@pytest.fixture
def target_redis() -> Iterator[RedisServer]:
    """A Redis on a loopback TCP port: the attack's target (Mailward's own Redis in the reported attack)."""
    server = start_redis(tcp=True)
    yield server
    server.stop()


def connections(probe: Any) -> int:
    """Connections the target Redis has accepted so far (``probe``, its client, keeps one open: counted once)."""
    return int(probe.info("stats")["total_connections_received"])


def tenant(cfg: Config, name: str, domains: dict[str, tuple[str, int]] | None = None, *,
           held: bool = False) -> int:
    """A tenant whose domains' transports the MSP set on the command line; ``held``: as if they had been stored
    before the egress policy existed (held to it, like every row the migration found)."""
    with msp_scope(), tdb.session_scope(cfg) as s:
        t = create_tenant(s, name)
        for domain, (host, port) in (domains or {}).items():
            d = add_domain(s, t, domain, host, port, "none", egress=EgressPolicy.unchecked(cfg))
            d.transport_egress_exempt = not held
        s.flush()
        return t.id


def stored_ldap(cfg: Config, tid: int, url: str, *, bind_dn: str = "", password: str = "") -> None:
    """A directory stored for the tenant as before the egress policy (not exempt): what the connect-time check sees."""
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        recipients.set_ldap(s, cfg, tid, url=url, base_dn="dc=acme,dc=test", bind_dn=bind_dn, password=password,
                            egress=EgressPolicy.unchecked(cfg))
        recipients.settings_row(s, tid).ldap_egress_exempt = False


def with_env(cfg_env: dict[str, str], **changes: str) -> Config:
    """This installation's configuration with some variables changed, as the process-wide one."""
    cfg = Config.from_env({**cfg_env, **changes})
    set_config(cfg)
    return cfg


# --- the policy itself -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("172.20.0.1", "private"),
    ("192.168.1.1", "private"), ("fd12:3456::1", "ULA"), ("100.64.0.1", "CGNAT"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.251", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"), ("168.63.129.16", "metadata"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::a00:1", "private"), ("2002:a9fe:a9fe::1", "metadata"),
    ("93.184.216.34", None), ("2606:2800:220:1::1", None)])
def test_internal_and_metadata_addresses_are_refused_public_ones_not(address: str, reason: str | None) -> None:
    """IPv4 hidden in IPv6 (mapped, NAT64, 6to4) is judged as the IPv4 address it reaches."""
    import ipaddress

    assert refused_reason(ipaddress.ip_address(address)) == reason


def test_the_msp_allowance_opens_networks_but_metadata_only_when_named() -> None:
    import ipaddress

    ip = ipaddress.ip_address
    allow = [ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("169.254.0.0/16")]
    assert refused_reason(ip("10.20.3.4"), allow) is None
    assert refused_reason(ip("10.21.3.4"), allow) == "private"
    assert refused_reason(ip("169.254.169.254"), allow) == "metadata"  # a wide allowance does not open it...
    assert refused_reason(ip("169.254.169.254"), [ipaddress.ip_network("169.254.169.254/32")]) is None  # ...this does


@pytest.mark.parametrize("name,value", [
    ("MAILWARD_TENANT_EGRESS_ALLOW", "10.0.0.1/8"), ("MAILWARD_TENANT_EGRESS_ALLOW", "10.0.0.0/33"),
    ("MAILWARD_TENANT_EGRESS_ALLOW", "intranet"), ("MAILWARD_TENANT_SMTP_PORTS", "25,smtp"),
    ("MAILWARD_TENANT_SMTP_PORTS", "0"), ("MAILWARD_TENANT_LDAP_PORTS", "700-600"),
    ("MAILWARD_REDIS_PASSWORD", "secret")])  # a password without a Redis URL: the private Valkey has none
def test_bad_egress_settings_stop_the_process_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


# --- LDAP: the reported attack ----------------------------------------------------------------------------------

def test_ldap_url_at_redis_with_a_crafted_bind_dn_is_refused_and_redis_untouched(web_app, cfg, target_redis):
    """The reported attack: a tenant points its LDAP directory at Mailward's Redis with a 266-byte bind DN whose
    BER length bytes end a Redis line, then presses "Test connection" (and the worker's sync repeats it). The API
    refuses the URL, and a stored one is refused at connect time: Redis never sees a connection."""
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    api = Client(web_app, make_key(cfg, tid))
    probe = target_redis.client()
    before = connections(probe)
    url = f"ldap://127.0.0.1:{target_redis.port}"
    body = error(api.put("/recipient-verification", {"ldap_url": url, "ldap_base_dn": "dc=acme,dc=test",
                                                     "ldap_bind_dn": ATTACK_DN, "ldap_password": ATTACK_PASSWORD}),
                 422, "validation")
    assert NOT_ALLOWED in body["message"]
    assert read(cfg, lambda s: recipients.get_settings(s, tid).ldap_url) == ""  # nothing was saved

    # A URL stored before the policy existed: "Test connection", a lookup and the periodic sync all refuse it.
    stored_ldap(cfg, tid, url, bind_dn=ATTACK_DN, password=ATTACK_PASSWORD)
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        with pytest.raises(directory.DirectoryError, match=NOT_ALLOWED):
            directory.test_connection(s, cfg, tid)
        with pytest.raises(directory.DirectoryError, match=NOT_ALLOWED):
            directory.lookup(s, cfg, tid, "bob@acme.test")
    from worker.jobs import sync_directory

    assert NOT_ALLOWED in sync_directory(tid)
    assert read(cfg, lambda s: s.scalar(select(RecipientVerification.last_sync_ok))) is False
    assert connections(probe) == before and probe.dbsize() == 0

    # The control: the same bind sent by a plain LDAP client does run the EVAL (the payload is real).
    plain = ldap3.Connection(ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=5), user=ATTACK_DN,
                             password=ATTACK_PASSWORD, receive_timeout=1, raise_exceptions=False)
    with pytest.raises(ldap3.core.exceptions.LDAPException):
        plain.bind()
    # The client gives up after its 1 s receive timeout; on a loaded machine Redis may not have read the bytes by
    # then (it still runs them once it does): wait for the key rather than read it once.
    wait_for(lambda: probe.get("pwned") == b"1", timeout=10, what="the payload's EVAL in the target Redis")


def test_portal_ldap_test_connection_to_a_refused_host_says_so_without_connecting(web_app, cfg, factory,
                                                                                  target_redis):
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    with msp_scope(), tdb.session_scope(cfg) as s:
        acme = s.get(Tenant, tid)
        s.expunge(acme)
    factory.user("admin@acme.test", "tenant_admin", acme)
    admin = sign_in(web_app, "admin@acme.test")
    token = csrf_token(text(admin.get("/portal/recipients")))
    probe = target_redis.client()
    before = connections(probe)
    form = {"csrf_token": token, "ldap-url": f"ldap://127.0.0.1:{target_redis.port}", "ldap-base_dn": "dc=a",
            "ldap-bind_dn": ATTACK_DN, "ldap-password": ATTACK_PASSWORD, "ldap-search_filter": "",
            "ldap-attributes": ""}
    resp = admin.post("/portal/recipients/ldap", data=form)
    assert resp.status_code == 422 and NOT_ALLOWED in text(resp)
    stored_ldap(cfg, tid, f"ldap://127.0.0.1:{target_redis.port}", bind_dn=ATTACK_DN, password=ATTACK_PASSWORD)
    resp = admin.post("/portal/recipients/ldap/test", data={"csrf_token": token, "test-address": ""},
                      follow_redirects=True)
    assert "Test failed" in text(resp) and NOT_ALLOWED in text(resp)
    assert connections(probe) == before and probe.dbsize() == 0


def test_ldap_and_smtp_only_on_their_ports(web_app, env, cfg, target_redis):
    """With loopback allowed by the MSP, the port lists still keep a directory and a transport off Redis's port."""
    strict_ports = with_env(env, MAILWARD_TENANT_EGRESS_ALLOW="127.0.0.0/8", MAILWARD_TENANT_SMTP_PORTS="",
                            MAILWARD_TENANT_LDAP_PORTS="")
    assert strict_ports.tenant_smtp_ports == {25, 465, 587, 2525} and strict_ports.tenant_ldap_ports == {389, 636}
    from app import create_app

    app = create_app(strict_ports)
    tid = tenant(strict_ports, "Acme", {"acme.test": ("mx.acme.test", 25)})
    api = Client(app, make_key(strict_ports, tid))
    domain_id = read(strict_ports, lambda s: s.scalar(select(Domain.id)))
    body = error(api.put(f"/domains/{domain_id}/transport", {"host": "127.0.0.1", "port": target_redis.port}),
                 422, "validation")
    assert body["message"] == f"transport port {target_redis.port} is not allowed: use 25, 465, 587 or 2525"
    body = error(api.put("/recipient-verification", {"ldap_url": f"ldap://127.0.0.1:{target_redis.port}",
                                                     "ldap_base_dn": "dc=a"}), 422, "validation")
    assert body["message"] == f"LDAP server port {target_redis.port} is not allowed: use 389 or 636"
    assert api.put(f"/domains/{domain_id}/transport", {"host": "127.0.0.1", "port": 2525}).status_code == 200
    ok = api.put("/recipient-verification", {"ldap_url": "ldaps://127.0.0.1", "ldap_base_dn": "dc=a"})
    assert ok.status_code == 200, ok.get_json()


def test_cli_may_point_a_directory_anywhere_and_a_tenant_change_is_held_again(env, cfg, ldap_dir, web_app):
    """``mailward recipients ldap`` (the MSP on the command line) sets a loopback directory and it syncs; when the
    tenant then changes it through the API, the policy applies again."""
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    out = run_cli(["recipients", "ldap", "Acme", "--url", ldap_dir.url, "--base-dn", ldap_dir.base_dn,
                   "--bind-dn", ldap_dir.bind_dn, "--password-stdin"], env, stdin=ldap_dir.password + "\n")
    assert out.returncode == 0, out.stderr
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        result = directory.sync(s, cfg, tid)
    assert result.ok, result.message
    api = Client(web_app, make_key(cfg, tid))
    body = error(api.put("/recipient-verification", {"ldap_url": ldap_dir.url}), 422, "validation")
    assert NOT_ALLOWED in body["message"]
    assert read(cfg, lambda s: s.scalar(select(RecipientVerification.ldap_egress_exempt))) is True  # unchanged


# --- transports: save time -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,port", [("127.0.0.1", 6379), ("169.254.169.254", 80), ("[fd00:ec2::254]", 80),
                                       ("localhost", 25), ("10.0.0.5", 25)])
def test_transport_to_an_internal_address_is_refused_for_tenant_and_msp_keys(web_app, cfg, host, port):
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    domain_id = read(cfg, lambda s: s.scalar(select(Domain.id)))
    for key in (make_key(cfg, tid), make_key(cfg, None)):
        api = Client(web_app, key)
        body = error(api.put(f"/domains/{domain_id}/transport", {"host": host, "port": port}), 422, "validation")
        assert NOT_ALLOWED in body["message"] and "host" in body["fields"]
        body = error(api.post("/domains", {"name": "new.acme.test", "transport_host": host.strip("[]"),
                                           "transport_port": port, "tenant_id": tid}), 422, "validation")
        assert NOT_ALLOWED in body["message"]
    assert read(cfg, lambda s: [(d.name, d.transport_host) for d in s.scalars(select(Domain))]) == [
        ("acme.test", "mx.acme.test")]


def test_transport_name_resolving_to_an_internal_address_is_refused(web_app, cfg, dns):
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    domain_id = read(cfg, lambda s: s.scalar(select(Domain.id)))
    api = Client(web_app, make_key(cfg, tid))
    dns.add("mail.acme.test", "A", "93.184.216.34")
    dns.add("mail.acme.test", "AAAA", "fd00:ec2::254")  # one refused address is enough to refuse the name
    body = error(api.put(f"/domains/{domain_id}/transport", {"host": "mail.acme.test"}), 422, "validation")
    assert NOT_ALLOWED in body["message"] and "fd00" not in body["message"]  # no resolution detail leaks
    dns.remove("mail.acme.test", "AAAA")
    assert api.put(f"/domains/{domain_id}/transport", {"host": "mail.acme.test"}).status_code == 200
    assert api.put(f"/domains/{domain_id}/transport", {"host": "not-yet.acme.test"}).status_code == 200  # NXDOMAIN


def test_the_same_refusal_whether_the_port_is_open_or_closed(web_app, cfg, sink):
    """No connection is tried before the check: a listening sink and a closed port read the same."""
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    domain_id = read(cfg, lambda s: s.scalar(select(Domain.id)))
    api = Client(web_app, make_key(cfg, tid))
    closed = free_port()
    path = f"/domains/{domain_id}/transport"
    answers = [api.put(path, {"host": "127.0.0.1", "port": port}) for port in (sink.port, closed)]
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].get_json() == answers[1].get_json()
    assert not sink.messages


def test_portal_transport_form_refuses_metadata(web_app, cfg, factory):
    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    with msp_scope(), tdb.session_scope(cfg) as s:
        acme = s.get(Tenant, tid)
        s.expunge(acme)
    factory.user("admin@acme.test", "tenant_admin", acme)
    admin = sign_in(web_app, "admin@acme.test")
    domain_id = read(cfg, lambda s: s.scalar(select(Domain.id)))
    page = text(admin.get(f"/portal/domains/{domain_id}"))
    prefix = f"d{domain_id}"
    resp = admin.post(f"/portal/domains/{domain_id}/transport",
                      data={"csrf_token": csrf_token(page), f"{prefix}-host": "169.254.169.254",
                            f"{prefix}-port": "80", f"{prefix}-tls": "none", f"{prefix}-back": "detail"})
    assert resp.status_code == 422 and NOT_ALLOWED in text(resp)
    assert read(cfg, lambda s: s.scalar(select(Domain.transport_host))) == "mx.acme.test"


def test_msp_cli_may_set_any_transport(env, cfg):
    """``mailward domain add`` and ``mailward domain transport``: the MSP's command line is not held to the policy,
    and the rows it sets are exempt at delivery time too."""
    tenant(cfg, "Acme")
    out = run_cli(["domain", "add", "Acme", "acme.test", "--transport", "127.0.0.1:6379"], env)
    assert out.returncode == 0, out.stderr
    out = run_cli(["domain", "transport", "acme.test", "169.254.169.254:80", "--tls", "none"], env)
    assert out.returncode == 0, out.stderr
    row = read(cfg, lambda s: s.scalars(select(Domain)).one())
    assert (row.transport_host, row.transport_port, row.transport_egress_exempt) == ("169.254.169.254", 80, True)


# --- transports: connect time (delivery and call-ahead) --------------------------------------------------------------

def replies(cfg: Config, tid: int) -> dict[str, str | None]:
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        return {d.rcpt: d.last_reply for d in s.scalars(select(Delivery).where(Delivery.attempts > 0))}


def test_delivery_never_connects_to_a_refused_transport_and_the_timeline_reads_the_same(env, cfg, sink, ingress):
    """Transports stored before the policy, one at a listening sink and one at a closed port: the ingress's fast
    path refuses both before connecting, with the same words, so the timeline tells nothing about the ports."""
    closed = free_port()
    tid = tenant(cfg, "Acme", {"open.test": ("127.0.0.1", sink.port), "closed.test": ("127.0.0.1", closed)},
                 held=True)
    bump_policy_version(cfg)
    with client(env) as c:
        for rcpt in ("bob@open.test", "bob@closed.test"):
            assert c.sendmail("alice@sender.example", [rcpt], make_mail(rcpt)) == {}
    got = wait_for(lambda: (r := replies(cfg, tid)) and len(r) == 2 and r, 20, what="two attempts")
    assert got["bob@open.test"] == got["bob@closed.test"]
    assert got["bob@open.test"].startswith("451 4.7.0 transport 127.0.0.1 " + NOT_ALLOWED)
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        details = {e.detail.replace("open.test", "X").replace("closed.test", "X")
                   for e in s.scalars(select(Event).where(Event.kind == "deferred"))}
    assert len(details) == 1, details
    assert not sink.messages


def test_dns_rebinding_after_the_save_is_caught_when_mail_is_delivered(env, cfg, sink, dns, web_app, ingress):
    """The transport's name was public when the tenant saved it and points at loopback by delivery time: the ingress
    and then the worker resolve, check and refuse; the sink never hears of it. Once the MSP's CLI sets the sink as
    the transport, the same mail goes (the path itself works)."""
    from smtp.delivery import deliver_message

    tid = tenant(cfg, "Acme", {"acme.test": ("mx.acme.test", 25)})
    domain_id = read(cfg, lambda s: s.scalar(select(Domain.id)))
    dns.add("mail.acme.test", "A", "93.184.216.34")
    resp = Client(web_app, make_key(cfg, tid)).put(f"/domains/{domain_id}/transport",
                                                   {"host": "mail.acme.test", "port": sink.port, "tls": "none"})
    assert resp.status_code == 200, resp.get_json()
    dns.set("mail.acme.test", "A", "127.0.0.1")
    with client(env) as c:
        assert c.sendmail("alice@sender.example", ["bob@acme.test"], make_mail("bob@acme.test")) == {}
    got = wait_for(lambda: replies(cfg, tid), 20, what="the first attempt")
    assert got["bob@acme.test"].startswith("451 4.7.0 transport mail.acme.test " + NOT_ALLOWED)
    message_id = read(cfg, lambda s: s.scalar(select(Delivery.message_id)))
    wait_for(lambda: deliver_message(cfg, tid, message_id) == 1, 10, interval=0.5, what="the retry (worker path)")
    assert replies(cfg, tid)["bob@acme.test"] == got["bob@acme.test"] and not sink.messages

    out = run_cli(["domain", "transport", "acme.test", f"127.0.0.1:{sink.port}", "--tls", "none"], env)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: deliver_message(cfg, tid, message_id) == 1, 10, interval=0.5, what="the delivery")
    assert len(sink.wait_count(1)) == 1


class AskedReplies(dict[str, str]):
    """The sink's ``rcpt_reply`` table, noting every address the sink was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def __contains__(self, address: object) -> bool:
        self.asked.append(str(address))
        return False


def test_callahead_never_probes_a_refused_transport(env, cfg, sink, ingress):
    """Call-ahead to a transport stored before the policy, at loopback: no probe reaches it (the recipient is
    accepted, as for any transport that gives no answer); the MSP's CLI-set transport is probed as before."""
    tid = tenant(cfg, "Acme", {"acme.test": ("127.0.0.1", sink.port)}, held=True)
    asked = AskedReplies()
    sink.handler.rcpt_reply = asked
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        recipients.set_mode(s, tid, "callahead")
    bump_policy_version(cfg)
    with client(env) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        assert c.rcpt("bob@acme.test")[0] == 250
    assert asked.asked == []
    out = run_cli(["domain", "transport", "acme.test", f"127.0.0.1:{sink.port}", "--tls", "none"], env)
    assert out.returncode == 0, out.stderr
    cache = redis_client(cfg)

    def probed() -> bool:
        # A refused probe marks the transport down for a minute, and the ingress sees the CLI's change within its
        # 1 s policy-version poll: a probe in between is refused again and marks it down again. Clear the marks
        # before each try.
        marks = cache.keys("mailward:callahead:*")
        if marks:
            cache.delete(*marks)
        with client(env) as c:
            c.ehlo()
            c.mail("alice@sender.example")
            c.rcpt("carol@acme.test")
        return "carol@acme.test" in asked.asked

    wait_for(probed, 10, interval=0.3, what="a probe of the CLI-set transport")


# --- logo --------------------------------------------------------------------------------------------------------

def test_logo_on_an_internal_or_metadata_address_is_refused_and_never_shown(web_app, cfg, factory, dns):
    tid = tenant(cfg, "Acme")
    with msp_scope(), tdb.session_scope(cfg) as s:
        acme = s.get(Tenant, tid)
        s.expunge(acme)
    factory.user("admin@acme.test", "tenant_admin", acme)
    admin = sign_in(web_app, "admin@acme.test")
    token = csrf_token(text(admin.get("/portal/branding")))
    dns.add("logo.acme.test", "A", "10.0.0.7")
    dns.add("cdn.acme.test", "A", "93.184.216.34")
    for url in ("https://169.254.169.254/logo.png", "https://logo.acme.test/logo.png", "https://127.0.0.1/x.png"):
        resp = admin.post("/portal/branding", data={"csrf_token": token, "name": "", "color": "", "logo_url": url})
        assert resp.status_code == 422 and "public address" in text(resp), url
    resp = admin.post("/portal/branding", data={"csrf_token": token, "name": "", "color": "",
                                                "logo_url": "https://cdn.acme.test/logo.png"})
    assert resp.status_code == 302
    with msp_scope(), tdb.session_scope(cfg) as s:
        row = s.get(Tenant, tid)
        row.brand_logo_url = "https://169.254.169.254/latest/meta-data/x.png"  # stored by older code, or by hand
        assert brand_of(row).logo_url is None and brand_of(row).logo_origin is None


# --- RQ without pickle, Redis with a password ------------------------------------------------------------------------

def test_jobs_are_stored_as_json_not_pickle(cfg):
    assert enqueue_delivery(cfg, 7, "m123")
    conn = redis.Redis.from_url(cfg.effective_redis_url)
    (job_id,) = Queue("delivery", connection=conn, serializer=SERIALIZER).job_ids
    data = zlib.decompress(conn.hget(f"rq:job:{job_id}", "data"))
    assert not data.startswith(b"\x80")  # a pickle's first byte (protocol 2 and up)
    assert json.loads(data) == [DELIVER_JOB, None, [7, "m123"], {}]


class _Touch:
    """Unpickling this creates a file: a stand-in for the code an attacker's pickled job would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return open, (self.path, "w")


def test_a_pickled_job_injected_into_redis_never_runs_code_in_the_worker(cfg, tmp_path):
    """Someone who can write to Redis queues a pickled job (RQ's default format): the worker reads JSON only, so the
    job fails to load; the pickle is never unpickled and the worker carries on."""
    from worker.runner import run_worker

    marker = tmp_path / "pwned"
    conn = redis.Redis.from_url(cfg.effective_redis_url)
    evil = Queue("default", connection=conn).enqueue_call(DELIVER_JOB, args=(_Touch(str(marker)),))
    assert run_worker(cfg, burst=True)
    assert not marker.exists()
    assert conn.hget(f"rq:job:{evil.id}", "status") == b"failed"


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    server = start_redis(tcp=True, password="s3cret/p@ss:word")
    yield server
    server.stop()


def test_redis_with_a_password_serves_every_client(env, redis_with_password, tmp_path):
    """MAILWARD_REDIS_URL with the password in it, or MAILWARD_REDIS_PASSWORD beside it: the queue, the worker and
    the web's rate limiter all authenticate; without the password Redis refuses."""
    from app import create_app
    from app.extensions import limiter
    from worker.runner import run_worker

    server = redis_with_password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    plain_url = f"redis://127.0.0.1:{server.port}/0"
    for changes in ({"MAILWARD_REDIS_URL": plain_url, "MAILWARD_REDIS_PASSWORD": server.password},
                    {"MAILWARD_REDIS_URL": plain_url.replace("//", "//:s3cret%2Fp%40ss%3Aword@")}):
        cfg = with_env(env, **changes)
        assert redis_client(cfg).ping()
        job = job_queue(cfg, "delivery").enqueue_call(DELIVER_JOB, args=(1, "no-such-message"))
        assert run_worker(cfg, burst=True)
        assert job.get_status(refresh=True) == "finished" and job.return_value() == 0  # nothing due, nothing sent
        with create_app(cfg).app_context():
            assert limiter.storage.check()
        server.client().flushall()
    out = run_cli(["worker", "--burst"], {**env, "MAILWARD_REDIS_URL": plain_url,
                                          "MAILWARD_REDIS_PASSWORD": server.password})
    assert out.returncode == 0, out.stderr
    wrong = run_cli(["worker", "--burst"], {**env, "MAILWARD_REDIS_URL": plain_url,
                                            "MAILWARD_REDIS_PASSWORD": "wrong"})
    assert wrong.returncode != 0
