"""Mail rules: the format's checks, the evaluation (order, final actions, AND/OR/invert, time frames), and each
condition kind and action on real mail through the real ingress to the sink."""

from __future__ import annotations

import dataclasses
import email
import io
import json
import smtplib
import socket
import zipfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smtp.mailrules import apply_final
from smtp.verdict import Action, Scored, Verdict
from tenants.exceptions import PermissionDenied, ValidationError
from tenants.mailrules.evaluate import LoadedRule, MailFacts, evaluate, ordered
from tenants.mailrules.schema import parse_rule
from tenants.mailrules.service import (
    add_rule,
    check_spec,
    directory_groups,
    load_rules,
    replace_directory_groups,
    rule_hits,
    rule_views,
    set_active,
)
from tenants.models import Delivery, Event, Message, PolicySettings
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.integration.test_ingress import client
from tests.integration.test_outbound import cli_ok, start_ingress
from tests.integration.test_recipients import sync as recipients_sync
from tests.integration.test_recipients import use_directory
from tests.support.clamd import EICAR
from tests.support.servers import Process, Sink, wait_for

# --- the format -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"name": "r", "what": [{"filename": "(a)\\1"}], "actions": [{"accept": {}}]}, "invalid regular expression"),
    ({"name": "r", "actions": [{"notify": {"to": "admin", "subject": "{nope}", "body": "x"}}]}, "unknown macro"),
    ({"name": "r", "colour": "red", "actions": [{"accept": {}}]}, "unknown rule field 'colour'"),
    ({"name": "r", "actions": []}, "actions is a list of 1"),
    ({"name": "r", "actions": [{"accept": {}}, {"quarantine": {}}]}, "at most one of accept"),
    ({"name": "r", "actions": [{"add_header": {"name": "X-Mailward-Status", "value": "clean"}}]}, "Mailward's own"),
    ({"name": "r", "actions": [{"add_header": {"name": "X-A", "value": "a\r\nBcc: x@y.z"}}]}, "one line"),
    ({"name": "r", "to": [{"ip": "10.0.0.0/8"}], "actions": [{"accept": {}}]}, "use it under from"),
    ({"name": "r", "when": [{"frame": {"days": ["mon"], "start": "25:00"}}], "actions": [{"accept": {}}]},
     "is not a time"),
    ({"name": "r", "priority": 101, "actions": [{"accept": {}}]}, "priority is a whole number"),
    ({"name": "r", "actions": [{"explode": {}}]}, "unknown action 'explode'"),
])
def test_bad_rules_are_refused_with_the_reason(raw, message):
    with pytest.raises(ValidationError, match=message):
        parse_rule(raw)


def test_a_rule_round_trips_through_its_dict_form():
    raw = {"name": "Finance macros", "priority": 70, "direction": "inbound", "active": True, "match": "all",
           "from": {"match": "any", "invert": True, "items": [{"internal": True}]},
           "to": {"match": "any", "invert": False, "items": [{"ldap_group": "Finance"}]},
           "what": {"match": "all", "invert": False, "items": [{"symbol": "OFFICE_MACRO"}, {"size": {"max": 1000}}]},
           "actions": [{"remove_attachments": {"which": "matched", "replacement": "gone: {filename}",
                                               "keep": True}},
                       {"bcc": {"to": "audit@acme.test", "copy": "original"}}]}
    spec = parse_rule(raw)
    assert parse_rule(spec.as_dict()).as_dict() == spec.as_dict()
    assert spec.as_dict()["from"]["invert"] is True


def test_a_reroute_back_into_mailward_is_refused(cfg):
    for host, port in [(cfg.hostname, 25), (cfg.smtp_listen.host, cfg.smtp_listen.port)]:
        spec = parse_rule({"name": "loop", "actions": [{"reroute": {"host": host, "port": port}}]})
        with pytest.raises(ValidationError, match="loop"):
            check_spec(cfg, spec, tenant_id=1)


def test_a_tenant_reroute_to_a_private_address_is_refused_by_the_egress_policy(cfg):
    spec = parse_rule({"name": "inside", "actions": [{"reroute": {"host": "10.1.2.3", "port": 25}}]})
    strict = dataclasses.replace(cfg, tenant_egress_allow=())
    with pytest.raises(ValidationError, match="not allowed"):
        check_spec(strict, spec, tenant_id=1)


# --- evaluation -----------------------------------------------------------------------------------------------------

def _rule(rid: int, raw: dict[str, Any], *, baseline: bool = False) -> LoadedRule:
    return LoadedRule(rid, baseline, parse_rule(raw, baseline=baseline))


def test_the_first_final_action_decides_and_stops_lower_rules():
    rules = ordered([
        _rule(1, {"name": "low", "priority": 10, "actions": [{"quarantine": {}}]}),
        _rule(2, {"name": "high", "priority": 90, "actions": [{"accept": {}}, {"tag_subject": {"tag": "[ok]"}}]}),
        _rule(3, {"name": "mid", "priority": 50, "actions": [{"add_header": {"name": "X-Mid", "value": "1"}}]}),
    ])
    out = evaluate(rules, MailFacts(), "bob@acme.test")
    assert [r.spec.name for r in out.matched] == ["high"]
    assert out.final is not None and out.final[1].kind == "accept"
    rules = ordered([r for r in rules if r.id != 2])
    out = evaluate(rules, MailFacts(), "bob@acme.test")
    assert [r.spec.name for r in out.matched] == ["mid", "low"]
    assert [a.kind for _, a in out.actions] == ["add_header"] and out.final[1].kind == "quarantine"


def test_locked_baseline_rules_run_before_any_tenant_rule_whatever_its_priority():
    rules = ordered([
        _rule(1, {"name": "tenant accept", "priority": 100, "actions": [{"accept": {}}]}),
        _rule(2, {"name": "msp block", "priority": 5, "locked": True, "actions": [{"block": {}}]}, baseline=True),
    ])
    assert [r.spec.name for r in rules] == ["msp block", "tenant accept"]
    assert evaluate(rules, MailFacts(), "a@acme.test").final[1].kind == "block"


def test_groups_combine_with_and_or_and_invert():
    facts = MailFacts(sender="eve@evil.example", client_ip="192.0.2.7", internal_domains=frozenset({"acme.test"}))
    both = {"from": [{"domain": "evil.example"}], "to": [{"address": "bob@acme.test"}], "actions": [{"accept": {}}]}
    assert evaluate([_rule(1, {"name": "and", **both})], facts, "bob@acme.test").matched
    assert not evaluate([_rule(1, {"name": "and", **both})], facts, "carol@acme.test").matched
    assert evaluate([_rule(1, {"name": "or", "match": "any", **both})], facts, "carol@acme.test").matched
    inverted = {"name": "not internal", "from": {"invert": True, "items": [{"internal": True}]},
                "actions": [{"accept": {}}]}
    assert evaluate([_rule(1, inverted)], facts, "bob@acme.test").matched
    inside = MailFacts(sender="x@acme.test", internal_domains=frozenset({"acme.test"}))
    assert not evaluate([_rule(1, inverted)], inside, "b@acme.test").matched
    all_of = {"name": "all", "what": {"match": "all", "items": [{"score": {"min": 3}}, {"symbol": "X_Y"}]},
              "actions": [{"accept": {}}]}
    assert evaluate([_rule(1, all_of)], MailFacts(score=4, symbols=frozenset({"X_Y"})), "b@acme.test").matched
    assert not evaluate([_rule(1, all_of)], MailFacts(score=4), "b@acme.test").matched
    net = {"name": "net", "from": [{"ip": "192.0.2.0/24"}], "actions": [{"accept": {}}]}
    assert evaluate([_rule(1, net)], facts, "b@acme.test").matched


def test_time_frames_are_read_in_the_tenants_time_zone_across_midnight_and_the_date_line():
    weekend_night = _rule(1, {"name": "weekend nights", "when": [{"frame": {"days": ["sat"], "start": "22:00",
                                                                                "end": "06:00"}}],
                              "actions": [{"accept": {}}]})
    # Saturday 23:30 in Auckland is Saturday 10:30 UTC; Sunday 05:00 there is Saturday 16:00 UTC.
    sat_night = datetime(2026, 12, 5, 10, 30, tzinfo=UTC)
    sun_early = datetime(2026, 12, 5, 16, 0, tzinfo=UTC)
    sun_late = datetime(2026, 12, 5, 18, 30, tzinfo=UTC)  # Sunday 07:30 in Auckland
    for when, tz, expected in [(sat_night, "Pacific/Auckland", True), (sun_early, "Pacific/Auckland", True),
                               (sun_late, "Pacific/Auckland", False), (sat_night, "UTC", False)]:
        facts = MailFacts(arrived=when, timezone=tz)
        assert bool(evaluate([weekend_night], facts, "b@acme.test").matched) is expected, (when, tz)


def test_content_conditions():
    facts = MailFacts(headers=[("Subject", "Invoice 42 overdue")], size=12_000,
                      attachments=[("report.docm", "application/vnd.ms-word.document.macroEnabled.12", 9000)],
                      archive_members=[("setup.exe", "application/x-dosexec")],
                      symbols=frozenset({"PHISH_QR_URL"}))
    cases = [
        ({"header": {"name": "subject", "regex": "invoice \\d+"}}, True),
        ({"header": {"name": "From", "regex": "."}}, False),
        ({"filename": "\\.docm$"}, True),
        ({"content_type": "macroEnabled"}, True),
        ({"archive_member": {"name": "\\.exe$", "type": "dosexec"}}, True),
        ({"archive_member": {"name": "\\.scr$"}}, False),
        ({"size": {"min": 10_000, "max": 20_000}}, True),
        ({"has": "qr_code"}, True),
        ({"has": "html_form"}, False),
        ({"virus": True}, False),
    ]
    for item, expected in cases:
        rule = _rule(1, {"name": "c", "what": [item], "actions": [{"accept": {}}]})
        assert bool(evaluate([rule], facts, "b@acme.test").matched) is expected, item


def test_a_rule_never_delivers_a_virus_but_may_block_it():
    facts = MailFacts(virus="Eicar-Test-Signature")
    virus = Verdict(Action.QUARANTINE, 0.0, [Scored("VIRUS", 0.0, "Eicar")], "virus", "quarantine (virus)")
    accept = evaluate([_rule(1, {"name": "let all", "actions": [{"accept": {}}]})], facts, "b@acme.test")
    assert apply_final(virus, accept, facts, "b@acme.test").action == Action.QUARANTINE
    held = evaluate([_rule(1, {"name": "hold", "actions": [{"quarantine": {"kind": "spam"}}]})], facts, "b@a.test")
    assert apply_final(virus, held, facts, "b@acme.test").kind == "virus"
    block = evaluate([_rule(1, {"name": "block", "actions": [{"block": {}}]})], facts, "b@acme.test")
    assert apply_final(virus, block, facts, "b@acme.test").action == Action.REJECT


# --- services -------------------------------------------------------------------------------------------------------

def test_a_locked_baseline_rule_cannot_be_disabled_by_a_tenant_an_unlocked_one_can(cfg, world):
    acme = world["acme"]
    with msp_scope(), tdb.session_scope(cfg) as s:
        locked = add_rule(s, cfg, {"name": "MSP lock", "locked": True, "actions": [{"block": {}}]}, tenant_id=None,
                          actor="admin@msp.test").id
        loose = add_rule(s, cfg, {"name": "MSP default", "actions": [{"tag_subject": {"tag": "[x]"}}]},
                         tenant_id=None, actor="admin@msp.test").id
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        with pytest.raises(PermissionDenied, match="locked"):
            set_active(s, cfg, locked, False, tenant_id=acme.id, actor="admin@acme.test")
        set_active(s, cfg, loose, False, tenant_id=acme.id, actor="admin@acme.test")
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        names = [r.spec.name for r in load_rules(s, acme.id)]
        views = {v.spec.name: v for v in rule_views(s, cfg, acme.id)}
    assert "MSP lock" in names and "MSP default" not in names
    assert views["MSP default"].opted_out and not views["MSP lock"].opted_out
    with tenant_scope(world["beta"].id), tdb.session_scope(cfg) as s:  # Beta's opt-outs are its own
        assert "MSP default" in [r.spec.name for r in load_rules(s, world["beta"].id)]


# --- through the ingress --------------------------------------------------------------------------------------------

def _add(cfg: Any, tenant_id: int | None, raw: dict[str, Any]) -> int:
    if tenant_id is None:
        with msp_scope(), tdb.session_scope(cfg) as s:
            return add_rule(s, cfg, raw, tenant_id=None, actor="admin@msp.test").id
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        return add_rule(s, cfg, raw, tenant_id=tenant_id, actor="admin@acme.test").id


def _alternative(subject: str, to: str = "bob@acme.test", sender: str = "alice@partner.example",
                 attach: tuple[str, bytes, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = email.utils.make_msgid(domain="partner.example")
    msg.set_content("Hello Bob,\nthe figures are attached.\n")
    msg.add_alternative("<html><body><p>Hello Bob,</p><p>the figures are attached.</p></body></html>",
                        subtype="html")
    if attach is not None:
        name, data, ctype = attach
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def _send(env: dict[str, str], rcpts: list[str], data: bytes, sender: str = "alice@partner.example") -> None:
    with client(env) as c:
        assert c.sendmail(sender, rcpts, data) == {}


def _parsed(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=default_policy)  # type: ignore[return-value]


def _bodies(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    return (text.get_content() if text else ""), (html.get_content() if html else "")


def test_tag_header_and_disclaimer_reach_the_sink_in_text_and_html(env, cfg, acme, sink, ingress, session):
    _add(cfg, acme.id, {"name": "External", "from": [{"internal": False}],
                        "actions": [{"tag_subject": {"tag": "[EXTERNAL]"}},
                                    {"add_header": {"name": "X-External-Sender", "value": "{sender}"}},
                                    {"disclaimer": {"text": "Careful: from {sender}.",
                                                    "html": "<p>Careful: from {sender}.</p>"}}]})
    _send(env, ["bob@acme.test"], _alternative("Figures"))
    got = _parsed(sink.wait_count(1)[0].data)
    assert got["Subject"] == "[EXTERNAL] Figures"
    assert got["X-External-Sender"] == "alice@partner.example"
    text, html = _bodies(got)
    assert "Careful: from alice@partner.example." in text and "Hello Bob" in text
    assert "<p>Careful: from alice@partner.example.</p>" in html and html.index("Careful") > html.index("Hello")
    with tenant_scope(acme.id):
        msg = session.scalars(select(Message)).one()
        events = [e.detail for e in session.scalars(select(Event).where(Event.message_id == msg.id))]
    assert "rule 'External'" in msg.explanation
    assert any("rule 'External' (priority 50) matched" in e for e in events)
    wait_for(lambda: sum(rule_hits(cfg, acme.id).values()) == 1, 10, what="the rule's hit counted")


def test_an_internal_sender_is_not_tagged(env, cfg, acme, sink, ingress):
    _add(cfg, acme.id, {"name": "External", "from": [{"internal": False}],
                        "actions": [{"tag_subject": {"tag": "[EXTERNAL]"}}]})
    _send(env, ["bob@acme.test"], _alternative("Lunch", sender="carol@acme.test"), sender="carol@acme.test")
    assert _parsed(sink.wait_count(1)[0].data)["Subject"] == "Lunch"


def test_matched_attachments_are_removed_with_a_replacement_and_the_original_is_held(env, cfg, acme, sink, ingress,
                                                                                      session):
    _add(cfg, acme.id, {"name": "No macros", "what": [{"filename": "\\.docm$"}],
                        "actions": [{"remove_attachments": {"which": "matched",
                                                            "replacement": "{filename} was removed by IT."}}]})
    data = _alternative("Report", attach=("report.docm", b"PK\x03\x04 not really a document", "application/zip"))
    _send(env, ["bob@acme.test"], data)
    got = _parsed(sink.wait_count(1)[0].data)
    names = [p.get_filename() for p in got.walk() if p.get_filename()]
    assert "report.docm" not in names
    assert "report.docm was removed by IT." in got.as_string()
    with tenant_scope(acme.id):
        held = session.scalars(select(Message).where(Message.verdict == "quarantine")).one()
        assert held.quarantine_kind == "attachment" and "original" in held.explanation
        statuses = {d.status for d in session.scalars(select(Delivery).where(Delivery.message_id == held.id))}
    assert statuses == {"quarantined"}


def test_rule_quarantine_block_and_discard(env, cfg, acme, sink, ingress, session):
    _add(cfg, acme.id, {"name": "Hold big", "to": [{"address": "big@acme.test"}],
                        "what": [{"size": {"min": 1}}], "actions": [{"quarantine": {"kind": "spam",
                                                                                     "reason": "size {score}"}}]})
    _add(cfg, acme.id, {"name": "Refuse", "to": [{"address": "no@acme.test"}],
                        "actions": [{"block": {"message": "Not accepted here"}}]})
    _add(cfg, acme.id, {"name": "Drop", "to": [{"address": "drop@acme.test"}],
                        "actions": [{"block": {"mode": "discard"}}]})
    _send(env, ["big@acme.test"], _alternative("Big", to="big@acme.test"))
    with client(env) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("alice@partner.example", ["no@acme.test"], _alternative("No", to="no@acme.test"))
        assert refused.value.smtp_code == 554 and b"Not accepted here" in refused.value.smtp_error
    _send(env, ["drop@acme.test"], _alternative("Drop", to="drop@acme.test"))
    _send(env, ["bob@acme.test"], _alternative("Normal"))
    sink.wait_count(1)
    assert [m.rcpts for m in sink.messages] == [["bob@acme.test"]]
    with tenant_scope(acme.id):
        rows = {d.rcpt: d.status for d in session.scalars(select(Delivery))}
    assert rows["big@acme.test"] == "quarantined" and rows["drop@acme.test"] == "rejected"


def test_recipients_in_one_mail_are_grouped_by_their_rules(env, cfg, acme, sink, ingress):
    replace_groups(cfg, acme.id, {"fin@acme.test": {"Finance"}})
    _add(cfg, acme.id, {"name": "Finance banner", "to": [{"ldap_group": "finance"}],
                        "actions": [{"tag_subject": {"tag": "[FIN]"}}]})
    _send(env, ["fin@acme.test", "bob@acme.test"], _alternative("Budget"))
    got = {tuple(m.rcpts): _parsed(m.data)["Subject"] for m in sink.wait_count(2)}
    assert got == {("fin@acme.test",): "[FIN] Budget", ("bob@acme.test",): "Budget"}


def replace_groups(cfg: Any, tenant_id: int, members: dict[str, set[str]]) -> None:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        replace_directory_groups(s, tenant_id, members)


def test_a_locked_msp_rule_applies_to_every_tenant(env, cfg, factory, sink, ingress):
    acme = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    _add(cfg, None, {"name": "MSP banner", "locked": True, "priority": 1,
                     "actions": [{"add_header": {"name": "X-Scanned-By", "value": "MSP"}}]})
    _add(cfg, acme.id, {"name": "Acme accepts", "priority": 100, "actions": [{"accept": {}}]})
    _send(env, ["bob@acme.test"], _alternative("A"))
    _send(env, ["bob@beta.test"], _alternative("B", to="bob@beta.test"))
    assert sorted(_parsed(m.data)["X-Scanned-By"] for m in sink.wait_count(2)) == ["MSP", "MSP"]


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path):
    proc = Process(["worker"], env, tmp_path / "worker.log").start()
    yield proc
    proc.stop()


def test_bcc_notify_and_reroute(env, cfg, acme, sink, ingress, worker, factory):
    other = Sink().start()
    try:
        factory.user("admin@acme.test", "tenant_admin", acme)
        _add(cfg, acme.id, {"name": "Audit", "to": [{"address": "ceo@acme.test"}],
                            "actions": [{"bcc": {"to": "audit@acme.test", "copy": "original"}},
                                        {"notify": {"to": "admin", "subject": "Mail for {recipient}",
                                                    "body": "{sender} wrote: {subject}"}}]})
        _add(cfg, acme.id, {"name": "Archive route", "to": [{"address": "archive@acme.test"}],
                            "actions": [{"reroute": {"host": "127.0.0.1", "port": other.port, "tls": "none"}}]})
        _send(env, ["ceo@acme.test"], _alternative("Board pack", to="ceo@acme.test"))
        _send(env, ["archive@acme.test"], _alternative("Keep", to="archive@acme.test"))
        got = sink.wait_count(3)
        by_rcpt = {tuple(m.rcpts): m for m in got}
        assert set(by_rcpt) == {("ceo@acme.test",), ("audit@acme.test",), ("admin@acme.test",)}
        assert _parsed(by_rcpt[("audit@acme.test",)].data)["Subject"] == "Board pack"
        notice = _parsed(by_rcpt[("admin@acme.test",)].data)
        assert notice["Subject"] == "Mail for ceo@acme.test" and notice["Auto-Submitted"] == "auto-generated"
        assert "alice@partner.example wrote: Board pack" in notice.get_content()
        assert by_rcpt[("admin@acme.test",)].mail_from == "<>"
        rerouted = other.wait_count(1)
        assert rerouted[0].rcpts == ["archive@acme.test"]
        assert all(m.rcpts != ["archive@acme.test"] for m in sink.messages)
    finally:
        other.stop()


def test_an_accept_rule_delivers_what_the_score_would_quarantine(env, cfg, acme, sink, ingress, session):
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:  # every mail scores above this tenant's quarantine
        s.add(PolicySettings(tenant_id=acme.id, settings=json.dumps(
            {"tag_threshold": -100.0, "quarantine_threshold": -50.0, "reject_threshold": 1000.0})))
    _add(cfg, acme.id, {"name": "Trust partner", "from": [{"domain": "partner.example"}],
                        "actions": [{"accept": {}}]})
    _send(env, ["bob@acme.test"], _alternative("Partner"))
    _send(env, ["carol@acme.test"], _alternative("Stranger", to="carol@acme.test", sender="x@other.example"),
          sender="x@other.example")
    sink.wait_count(1)
    with tenant_scope(acme.id):
        stored = {m.subject: m for m in session.scalars(select(Message))}
    assert stored["Partner"].verdict == "deliver"
    assert "accepted by rule 'Trust partner'" in stored["Partner"].explanation
    assert stored["Stranger"].verdict == "quarantine"
    assert [m.rcpts for m in sink.messages] == [["bob@acme.test"]]


def _zip_with(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def test_header_content_type_archive_ip_and_regex_conditions_through_the_ingress(env, cfg, acme, sink, ingress):
    def marks(name: str, items: list[dict[str, Any]], header: str) -> None:
        _add(cfg, acme.id, {"name": name, "what" if name.startswith("w") else "from": items,
                            "actions": [{"add_header": {"name": header, "value": "yes"}}]})

    marks("what header", [{"header": {"name": "Subject", "regex": "^invoice \\d+$"}}], "X-Header-Rule")
    marks("what type", [{"content_type": "^application/zip$"}], "X-Type-Rule")
    marks("what member", [{"archive_member": {"name": "\\.txt$", "type": "^text/"}}], "X-Member-Rule")
    marks("from net", [{"ip": "127.0.0.0/8"}], "X-Net-Rule")
    marks("from regex", [{"regex": "^alice@.*\\.example$"}], "X-Regex-Rule")
    archive = _zip_with("readme.txt", b"Just some text, nothing to run.\n" * 20)
    _send(env, ["bob@acme.test"], _alternative("Invoice 42", attach=("files.zip", archive, "application/octet-stream")))
    _send(env, ["bob@acme.test"], _alternative("Hello"), sender="bob@elsewhere.test")
    got = {_parsed(m.data)["Subject"]: _parsed(m.data) for m in sink.wait_count(2)}
    first, second = got["Invoice 42"], got["Hello"]
    for header in ("X-Header-Rule", "X-Type-Rule", "X-Member-Rule", "X-Net-Rule", "X-Regex-Rule"):
        assert first[header] == "yes", header
    assert second["X-Net-Rule"] == "yes"
    for header in ("X-Header-Rule", "X-Type-Rule", "X-Member-Rule", "X-Regex-Rule"):
        assert second[header] is None, header


@pytest.fixture
def relaying(env: dict[str, str], acme: Any, sink: Sink, tmp_path: Path):
    """Acme relays from 127.0.0.0/8; the sink stands in for every recipient's MX."""
    out_env = dict(env, MAILWARD_RELAYHOST=f"127.0.0.1:{sink.port}")
    cli_ok(["relay", "add", "Acme", "127.0.0.0/8"], out_env)
    proc = start_ingress(out_env, tmp_path / "smtp-out.log")
    yield out_env
    proc.stop()


def test_an_outbound_disclaimer_is_added_before_signing(cfg, acme, sink, relaying):
    _add(cfg, acme.id, {"name": "Disclaimer", "direction": "outbound",
                        "actions": [{"disclaimer": {"text": "Sent from Acme by {sender}."}}]})
    _add(cfg, acme.id, {"name": "Inbound only", "direction": "inbound",
                        "actions": [{"tag_subject": {"tag": "[IN]"}}]})
    _send(relaying, ["partner@remote.example"], _alternative("Offer", to="partner@remote.example",
                                                             sender="alice@acme.test"), sender="alice@acme.test")
    got = _parsed(sink.wait_count(1)[0].data)
    text, html = _bodies(got)
    assert "Sent from Acme by alice@acme.test." in text and "Sent from Acme by alice@acme.test." in html
    assert got["Subject"] == "Offer"


def test_a_directory_sync_reads_group_memberships_for_the_ldap_group_condition(cfg, factory, sink, ldap_dir):
    acme = factory.tenant("Acme", ("acme.test", "acme2.test"), transport_port=sink.port)
    alice = f"uid=alice,{ldap_dir.base_dn}"
    carol = f"uid=carol,{ldap_dir.base_dn}"
    mallory = f"uid=mallory,{ldap_dir.base_dn}"
    ldap_dir.conn.add(f"cn=Finance,{ldap_dir.base_dn}", ["groupOfNames"], {"cn": "Finance", "member": [alice, mallory]})
    ldap_dir.conn.add(f"cn=Board,{ldap_dir.base_dn}", ["groupOfNames"], {"cn": "Board", "member": [alice, carol]})
    use_directory(cfg, acme.id, ldap_dir)
    result = recipients_sync(cfg, acme.id)
    assert result.ok and "group membership" in result.message
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        found = directory_groups(s, acme.id, ["alice@acme.test", "ally@acme.test", "carol@acme2.test",
                                              "bob@acme.test", "mallory@elsewhere.example"])
    assert found == {"alice@acme.test": {"finance", "board"}, "ally@acme.test": {"finance", "board"},
                     "carol@acme2.test": {"board"}}
    with tenant_scope(factory.tenant("Beta", ("beta.test",)).id), tdb.session_scope(cfg) as s:
        assert directory_groups(s, acme.id, ["alice@acme.test"]) == {}  # not Beta's to read


def test_virus_score_symbol_and_form_conditions_with_notify_set_remove_and_processed_bcc(env, cfg, acme, sink,
                                                                                          tmp_path, session,
                                                                                          clamd_server, worker):
    av_env = dict(env, MAILWARD_CLAMD=clamd_server.address)
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:  # the form mail is delivered, whatever it scores
        s.add(PolicySettings(tenant_id=acme.id, settings=json.dumps(
            {"tag_threshold": 100.0, "quarantine_threshold": 200.0, "reject_threshold": 300.0})))
    _add(cfg, acme.id, {"name": "Virus notice", "what": [{"virus": True}],
                        "actions": [{"notify": {"to": "recipient", "subject": "Held: {subject}",
                                                "body": "A mail from {sender} had {virus}."}},
                                    {"notify": {"to": "sender", "subject": "Your mail was held",
                                                "body": "It had {virus}."}}]})
    _add(cfg, acme.id, {"name": "Form marker", "what": [{"has": "html_form"}],
                        "actions": [{"set_header": {"name": "X-Form", "value": "yes"}},
                                    {"remove_header": {"name": "X-Remove-Me"}}]})
    _add(cfg, acme.id, {"name": "Form audit", "priority": 40,
                        "what": {"match": "all", "items": [{"score": {"min": -1000}},
                                                            {"symbol": "PHISH_PASSWORD_FORM"}]},
                        "actions": [{"bcc": {"to": "audit@acme.test", "copy": "processed"}}]})
    proc = Process(["smtp"], av_env, tmp_path / "smtp-av.log").start()
    try:
        wait_for(lambda: _up(av_env), 20, what="ingress port")
        virus = EmailMessage()
        virus["From"], virus["To"], virus["Subject"] = "alice@partner.example", "bob@acme.test", "Invoice"
        virus.set_content(EICAR.decode() + "\n")
        _send(av_env, ["bob@acme.test"], virus.as_bytes())
        form = EmailMessage()
        form["From"], form["To"], form["Subject"] = "alice@partner.example", "carol@acme.test", "Sign in"
        form["X-Remove-Me"] = "please"
        form.set_content("Sign in below.\n")
        form.add_alternative('<html><body><form action="https://login.example.net/x" method="post">'
                             '<input type="password" name="p"><input type="submit"></form></body></html>',
                             subtype="html")
        _send(av_env, ["carol@acme.test"], form.as_bytes())
        got = {tuple(m.rcpts): _parsed(m.data) for m in sink.wait_count(3, timeout=60)}
    finally:
        proc.stop()
    assert set(got) == {("bob@acme.test",), ("carol@acme.test",), ("audit@acme.test",)}
    notice = got[("bob@acme.test",)]
    assert notice["Subject"] == "Held: Invoice" and "alice@partner.example had" in notice.get_content()
    delivered, copy = got[("carol@acme.test",)], got[("audit@acme.test",)]
    assert delivered["X-Form"] == "yes" and delivered["X-Remove-Me"] is None
    assert copy["X-Form"] == "yes" and copy["Subject"] == "Sign in"  # the processed mail
    with tenant_scope(acme.id):
        held = session.scalars(select(Message).where(Message.subject == "Invoice")).one()
        to_sender = session.scalars(select(Message).where(Message.direction == "notice",
                                                          Message.subject == "Your mail was held")).one()
        rows = [d.rcpt for d in session.scalars(select(Delivery).where(Delivery.message_id == to_sender.id))]
    assert (held.verdict, held.quarantine_kind) == ("quarantine", "virus")
    assert rows == ["alice@partner.example"]


def _up(env: dict[str, str]) -> bool:
    port = int(env["MAILWARD_SMTP_LISTEN"].rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
