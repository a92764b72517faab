"""The mail rules' dry-run replay: a seeded mail history of two tenants (stored through the ingress's own
``store_message``, findings and raw mail included) replayed under drafts, with exact counts and samples of what
would change; only the tenant's own mail is read, another tenant's job is a 404 (None from ``replay_status``); the
job runs in a real worker process against real Redis; the command line prints the report."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from smtp.mailstore import NewMessage, store_message
from tenants.exceptions import ValidationError
from tenants.ids import new_id
from tenants.mailrules import service
from tenants.mailrules.replay import ReplayReport, replay
from tenants.mailrules.replayjobs import enqueue_replay, replay_status
from tenants.models import Message, utcnow
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.support.servers import Process, run_cli, wait_for
from tests.support.web import post_form, sign_in, text

HOLD_MARKED: dict[str, Any] = {"name": "Hold marked", "what": {"items": [{"symbol": "TEST_MARK"}]},
                               "actions": [{"quarantine": {"reason": "marked"}}]}


def mail(subject: str, *, sender: str = "news@outside.example", to: str = "bob@acme.test",
         attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{new_id()}@outside.example>"
    msg.set_content("Hello.\n")
    if attachment is not None:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream", filename=attachment[0])
    return b"X-Mailward-Status: clean, score=0\r\n" + msg.as_bytes()


def zip_with(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(name, b"MZ" + b"\0" * 64)
    return buf.getvalue()


def store(cfg: Any, tenant_id: int, subject: str, *, rcpts: tuple[str, ...] = ("bob@acme.test",),
          verdict: str = "deliver", symbols: tuple[tuple[str, float], ...] = (), score: float = 0.0,
          sender: str = "news@outside.example", direction: str = "inbound", days_ago: float = 1.0,
          kind: str | None = None, explanation: str = "", data: bytes | None = None,
          before_rules: str | None = None) -> str:
    """One stored mail as the ingress commits it, received ``days_ago`` days ago; its id."""
    held = verdict == "quarantine"
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        msg = store_message(s, NewMessage(
            tenant_id=tenant_id, queue_id=new_id(), mail_from=sender, rcpts=list(rcpts),
            data=data or mail(subject, sender=sender, to=rcpts[0]), direction=direction, client_ip="203.0.113.9",
            header_from=sender, subject=subject, verdict=verdict, verdict_before_rules=before_rules, score=score,
            explanation=explanation or f"{verdict}: score {score:g}",
            quarantine_kind=(kind or "spam") if held else None,
            findings=[(sym, sc, "test") for sym, sc in symbols], deliver=not held, retention_days=14 if held else None))
        s.flush()
        s.execute(update(Message).where(Message.id == msg.id).values(received_at=utcnow() - timedelta(days=days_ago)))
        return msg.id


@pytest.fixture
def history(cfg, world) -> dict[str, str]:
    """Acme's and Beta's mail of the last days (and one of Acme's older than any window)."""
    acme, beta = world["acme"].id, world["beta"].id
    return {
        "marked2": store(cfg, acme, "Marked for two", rcpts=("bob@acme.test", "carol@acme.test"),
                         symbols=(("TEST_MARK", 1.0),), score=1.0),
        "marked1": store(cfg, acme, "Marked for one", symbols=(("TEST_MARK", 1.0),), score=1.0, days_ago=5),
        "zip": store(cfg, acme, "Invoice", data=mail("Invoice", attachment=("invoice.zip", zip_with("run.exe"))),
                     days_ago=2),
        "spam": store(cfg, acme, "Cheap pills", verdict="quarantine", symbols=(("BAYES_99", 9.0),), score=9.0,
                      explanation="quarantine (spam): score 9 >= quarantine 6"),
        "virus": store(cfg, acme, "Your parcel", verdict="quarantine", kind="virus",
                       symbols=(("CLAM_VIRUS", 100.0),), score=100.0),
        "outbound": store(cfg, acme, "Our offer", rcpts=("buyer@partner.example",), sender="alice@acme.test",
                          direction="outbound"),
        "old": store(cfg, acme, "Marked long ago", symbols=(("TEST_MARK", 1.0),), score=1.0, days_ago=40),
        "beta1": store(cfg, beta, "Beta marked", rcpts=("bob@beta.test",), symbols=(("TEST_MARK", 1.0),), score=1.0),
        "beta2": store(cfg, beta, "Beta spam", rcpts=("bob@beta.test",), verdict="quarantine",
                       symbols=(("BAYES_99", 9.0),), score=9.0),
    }


def run(cfg: Any, tenant_id: int, draft: list[dict[str, Any]] | None, days: int = 7) -> ReplayReport:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        return replay(s, cfg, tenant_id, timedelta(days=days), draft)


def sample_ids(report: ReplayReport, key: str) -> set[str]:
    return {s.message_id for s in report.changes[key].samples}


def test_draft_quarantining_a_symbol_moves_exactly_the_marked_recipients(cfg, world, history):
    report = run(cfg, world["acme"].id, [HOLD_MARKED])
    moved = report.changes["deliver_to_quarantine"]
    assert moved.count == 3  # two recipients of one mail, one of another; the 40-day-old one is outside the window
    assert {(s.message_id, s.recipient) for s in moved.samples} == {
        (history["marked2"], "bob@acme.test"), (history["marked2"], "carol@acme.test"),
        (history["marked1"], "bob@acme.test")}
    assert all(s.change == "deliver → quarantine by rule 'Hold marked'" and s.sender == "news@outside.example"
               for s in moved.samples)
    assert report.mails == 6 and report.recipients == 7  # Acme's mail of the week only
    assert report.moves == {"deliver → quarantine": 3}
    assert [(r.name, r.now, r.draft) for r in report.rules] == [("Hold marked", None, 3)]
    assert report.changes["quarantine_to_deliver"].count == 0 and report.changes["gain_banner"].count == 0
    assert run(cfg, world["acme"].id, [HOLD_MARKED], days=30).changes["deliver_to_quarantine"].count == 3
    # Without a draft the current rules are replayed against themselves: nothing changes.
    same = run(cfg, world["acme"].id, None)
    assert same.mails == 6 and not same.moves and all(c.count == 0 for c in same.changes.values())


def test_accept_rule_delivers_held_spam_but_never_a_virus(cfg, world, history):
    draft = [{"name": "Let it through", "what": {"items": [{"score": {"min": 5}}]}, "actions": [{"accept": {}}]}]
    report = run(cfg, world["acme"].id, draft)
    moved = report.changes["quarantine_to_deliver"]
    assert moved.count == 1 and sample_ids(report, "quarantine_to_deliver") == {history["spam"]}
    assert [(r.name, r.draft) for r in report.rules] == [("Let it through", 2)]  # matched the virus too: no effect


def test_block_rule_counts_deliver_to_block_and_reports_progress(cfg, world, history):
    draft = [{"name": "Block outside", "from": {"items": [{"domain": "outside.example"}]},
              "actions": [{"block": {"mode": "discard"}}]}]
    seen: list[tuple[int, int]] = []
    with tenant_scope(world["acme"].id), tdb.session_scope(cfg) as s:
        report = replay(s, cfg, world["acme"].id, timedelta(days=7), draft,
                        progress=lambda done, total: seen.append((done, total)))
    assert report.changes["deliver_to_block"].count == 4  # marked (2 recipients), marked, zip
    assert report.moves == {"deliver → block": 4, "quarantine → block": 2}  # the held spam and virus too
    assert seen == [(6, 6)]


def test_removing_a_current_rule_shows_the_verdict_before_it(cfg, world, history):
    """A mail a current rule quarantined goes back to the checks' verdict (stored beside the rules' verdict)."""
    acme = world["acme"].id
    with msp_scope(), tdb.session_scope(cfg) as s:
        service.add_rule(s, cfg, HOLD_MARKED, tenant_id=acme, actor="test")
    held = store(cfg, acme, "Held by the rule", verdict="quarantine", symbols=(("TEST_MARK", 1.0),), score=1.0,
                 explanation="quarantine (spam): rule 'Hold marked': marked (was deliver: score 1 below tag 5); "
                             "matched rule 'Hold marked'", before_rules="deliver")
    report = run(cfg, acme, [])
    assert report.changes["quarantine_to_deliver"].count == 4  # the one held by the rule and the three it would hold
    assert history["marked2"] in sample_ids(report, "quarantine_to_deliver")
    assert held in sample_ids(report, "quarantine_to_deliver")
    assert [(r.name, r.now, r.draft) for r in report.rules] == [("Hold marked", 4, None)]


def test_disclaimer_draft_gains_a_banner_on_outbound_mail_only(cfg, world, history):
    draft = [{"name": "Disclaimer", "direction": "outbound",
              "actions": [{"disclaimer": {"text": "Sent by {sender} via Acme"}}]},
             {"name": "Tag outside", "from": {"items": [{"internal": False}]},
              "to": {"items": [{"address": "carol@acme.test"}]},
              "actions": [{"tag_subject": {"tag": "[EXT]"}}]}]
    report = run(cfg, world["acme"].id, draft)
    banner = report.changes["gain_banner"]
    assert banner.count == 2
    assert {(s.message_id, s.recipient) for s in banner.samples} == {
        (history["outbound"], "buyer@partner.example"), (history["marked2"], "carol@acme.test")}
    assert report.content_read == 0  # no rule looked at content: no raw mail was read


def test_filename_and_archive_rules_read_the_stored_mail(cfg, world, history):
    draft = [{"name": "Strip zips", "what": {"items": [{"filename": r"\.zip$"}]},
              "actions": [{"remove_attachments": {"which": "matched"}}, {"bcc": {"to": "audit@acme.test"}}]},
             {"name": "Exe inside", "what": {"items": [{"archive_member": {"name": r"\.exe$"}}]},
              "actions": [{"quarantine": {"kind": "attachment"}}]},
             {"name": "Real zip type", "what": {"items": [{"content_type": "^application/zip$"}]},
              "actions": [{"reroute": {"host": "archive.acme.test"}}]}]
    report = run(cfg, world["acme"].id, draft)
    assert report.content_read == 6 and report.content_missing == 0
    lost = report.changes["lose_attachment"]
    assert lost.count == 1 and lost.samples[0].message_id == history["zip"]
    assert lost.samples[0].change == "loses invoice.zip"
    assert sample_ids(report, "deliver_to_quarantine") == {history["zip"]}
    assert report.changes["gain_bcc"].count == 1 and report.changes["gain_bcc"].samples[0].change == \
        "BCC to audit@acme.test"
    # "Exe inside" is final: rules below it (the reroute) do not run for that recipient.
    assert report.changes["reroute"].count == 0
    assert {r.name: r.draft for r in report.rules} == {"Strip zips": 1, "Exe inside": 1, "Real zip type": 0}


def test_replay_reads_only_the_tenants_mail(cfg, world, history):
    beta = run(cfg, world["beta"].id, [HOLD_MARKED])
    assert beta.mails == 2 and beta.changes["deliver_to_quarantine"].count == 1
    assert sample_ids(beta, "deliver_to_quarantine") == {history["beta1"]}
    acme = run(cfg, world["acme"].id, [HOLD_MARKED])
    every = {s.message_id for c in acme.changes.values() for s in c.samples}
    assert not every & {history["beta1"], history["beta2"]}


def test_bad_drafts_and_windows_are_refused_with_a_message(cfg, world, history):
    with pytest.raises(ValidationError, match=r"draft entry 1 \('Bad'\).*invalid regular expression"):
        run(cfg, world["acme"].id, [{"name": "Bad", "what": {"items": [{"filename": "(["}]},
                                     "actions": [{"accept": {}}]}])
    with pytest.raises(ValidationError, match="at most 30 days"):
        run(cfg, world["acme"].id, None, days=31)
    with pytest.raises(ValidationError, match="appears twice"):
        run(cfg, world["acme"].id, [HOLD_MARKED, HOLD_MARKED])


def test_another_tenants_job_is_none_and_404(cfg, web_app, world, history):
    job = enqueue_replay(cfg, world["acme"].id, 7, [HOLD_MARKED])
    assert replay_status(cfg, world["acme"].id, job)["state"] == "queued"
    assert replay_status(cfg, world["beta"].id, job) is None
    assert replay_status(cfg, world["acme"].id, "../" + job) is None
    beta = sign_in(web_app, "admin@beta.test")
    assert beta.get(f"/portal/rules/preview/{job}").status_code == 404
    auditor = sign_in(web_app, "auditor@acme.test")
    page = auditor.get(f"/portal/rules/preview/{job}")
    assert page.status_code == 200 and "<progress" in text(page) and 'http-equiv="refresh"' in text(page)
    assert auditor.get("/portal/rules/preview").status_code == 404  # the auditor reads results, starts none


def test_preview_runs_in_a_real_worker_and_shows_the_report(env, cfg, web_app, world, history, tmp_path):
    admin = sign_in(web_app, "admin@acme.test")
    rules_page = text(admin.get("/portal/rules"))
    assert 'id="preview-changes"' in rules_page
    bad = post_form(admin, "/portal/rules/preview", "/portal/rules/preview", {"draft": "- name: [", "since": "7"})
    assert bad.status_code == 422 and "invalid YAML" in text(bad)
    resp = post_form(admin, "/portal/rules/preview", "/portal/rules/preview",
                     {"draft": yaml.safe_dump([HOLD_MARKED]), "since": "7"})
    assert resp.status_code == 302, text(resp)
    job = resp.headers["Location"].rsplit("/", 1)[1]
    worker = Process(["worker"], env, tmp_path / "worker.log").start()
    try:
        status = wait_for(lambda: (s := replay_status(cfg, world["acme"].id, job)) and s["state"] == "done" and s,
                          60, what="replay job done")
    finally:
        worker.stop()
    assert status["report"]["changes"]["deliver_to_quarantine"]["count"] == 3
    page = text(admin.get(f"/portal/rules/preview/{job}"))
    assert 'http-equiv="refresh"' not in page and "<progress" not in page
    assert 'id="count-deliver_to_quarantine"' in page
    row = page.split('id="count-deliver_to_quarantine"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num">3</td>' in row
    assert history["marked2"] in page and "carol@acme.test" in page and "Hold marked" in page


def test_cli_prints_the_report(env, world, history, tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text(yaml.safe_dump([HOLD_MARKED]))
    out = run_cli(["rules", "replay", "Acme", "--since", "7d", "--draft", str(draft)], env)
    assert out.returncode == 0, out.stderr
    assert "Replayed 6 mail(s) to 7 recipient(s) of the last 7 day(s)" in out.stdout
    assert "Delivered now, quarantined with the draft: 3" in out.stdout
    assert history["marked1"] in out.stdout and history["beta1"] not in out.stdout
    too_long = run_cli(["rules", "replay", "Acme", "--since", "40d"], env)
    assert too_long.returncode == 1 and "at most 30 days" in too_long.stderr
    draft.write_text("- name: Bad\n  actions: [{explode: {}}]\n")
    bad = run_cli(["rules", "replay", "Acme", "--draft", str(draft)], env)
    assert bad.returncode == 1 and "unknown action 'explode'" in bad.stderr
