"""Tracking center and statistics at scale: fill N messages with bulk inserts, then time search pages (first, deep,
by recipient, by Message-ID, by client IP, MSP-wide), one timeline, a roll-up of one day and a statistics report.

Builds a throwaway SQLite installation in a temporary folder (or uses ``--database-url``, an empty database it
migrates), spreads the mail over ``--tenants`` tenants and ``--days`` days, one delivery row and one finding per
message. Prints figures, and on SQLite the query plans; never pass/fail.

    .venv/bin/python bench/tracking.py -n 1000000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from tenants import stats, tracking  # noqa: E402
from tenants.config import Config  # noqa: E402
from tenants.db import dispose_engines, get_engine, migrate, session_scope  # noqa: E402
from tenants.models import Delivery, Event, Finding, Message, Msp, Tenant  # noqa: E402
from tenants.scope import msp_scope, tenant_scope  # noqa: E402
from worker import rollup  # noqa: E402

#: Rows per INSERT batch.
BATCH = 20_000
#: Timed repetitions of each query (the median is printed).
REPEAT = 5


def fill(cfg: Config, n: int, tenants: int, days: int, seed: int = 7) -> dict[str, Any]:
    """Insert ``n`` messages (with a delivery, a finding and an event each) spread over tenants and days."""
    rnd = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    span = days * 86400
    probe: dict[str, Any] = {}
    with msp_scope(), session_scope(cfg) as s:
        s.execute(insert(Msp).values(id=1, name="Bench MSP"))
        s.execute(insert(Tenant), [{"id": t + 1, "msp_id": 1, "name": f"T{t + 1}"} for t in range(tenants)])
    dlv_id = 0
    for start in range(0, n, BATCH):
        msgs, dlvs, finds, evs = [], [], [], []
        for i in range(start, min(n, start + BATCH)):
            tid = i % tenants + 1
            mid = f"M{i:011d}"
            at = now - timedelta(seconds=rnd.randrange(span))
            rcpt = f"user{rnd.randrange(500)}@t{tid}.example"
            verdict = rnd.choice(("deliver", "deliver", "deliver", "tag", "quarantine", "reject"))
            msgs.append({"id": mid, "tenant_id": tid, "queue_id": f"Q{i:011d}", "direction": "inbound",
                         "received_at": at, "client_ip": f"198.51.{rnd.randrange(256)}.{rnd.randrange(256)}",
                         "client_helo": "mx.sender.example", "mail_from": f"s{rnd.randrange(5000)}@sender.example",
                         "header_from": None, "subject": f"Subject {i}", "message_id_header": f"<{mid}@sender.example>",
                         "size": 2000 + rnd.randrange(50_000), "verdict": verdict, "score": 1.0, "explanation": verdict,
                         "quarantine_kind": "spam" if verdict == "quarantine" else None, "expires_at": None})
            if verdict != "reject":
                dlv_id += 1
                dlvs.append({"id": dlv_id, "tenant_id": tid, "message_id": mid, "rcpt": rcpt, "route": "transport",
                             "status": "delivered", "attempts": 1, "next_attempt_at": at, "created_at": at,
                             "updated_at": at, "last_reply": "250 2.0.0 Ok"})
            finds.append({"tenant_id": tid, "message_id": mid, "symbol": "BAYES_50", "score": 0.8, "reason": "b"})
            evs.append({"tenant_id": tid, "message_id": mid, "at": at, "kind": "received", "detail": "x"})
            if i == n // 2:
                probe = {"tenant": tid, "rcpt": rcpt, "message_id": mid, "client_ip": msgs[-1]["client_ip"]}
        with msp_scope(), session_scope(cfg) as s:
            for model, rows in ((Message, msgs), (Delivery, dlvs), (Finding, finds), (Event, evs)):
                if rows:
                    s.execute(insert(model), rows)
        print(f"  inserted {min(n, start + BATCH):,} messages", end="\r", flush=True)
    print()
    with get_engine(cfg).connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return probe


def timed(fn: Callable[[], object]) -> float:
    runs = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return sorted(runs)[len(runs) // 2] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--count", type=int, default=200_000, help="messages to insert (default 200000)")
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--database-url", help="an empty database to use instead of a temporary SQLite file")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mw-bench-tracking-"))
    cfg = Config(data_dir=tmp, database_url=args.database_url or f"sqlite:///{tmp / 'bench.db'}")
    migrate(cfg)
    t0 = time.perf_counter()
    probe = fill(cfg, args.count, args.tenants, args.days)
    print(f"fill_s={time.perf_counter() - t0:.1f} messages={args.count}")
    tid = probe["tenant"]

    def page(scope: Any, f: tracking.Filters, deep: int = 0) -> None:
        with scope(), session_scope(cfg) as s:
            after = None
            for _ in range(deep + 1):
                _, after = tracking.search_page(s, f, after=after, limit=50)

    figures = {
        "tenant_first_page_ms": lambda: page(lambda: tenant_scope(tid), tracking.Filters()),
        "tenant_page_20_ms": lambda: page(lambda: tenant_scope(tid), tracking.Filters(), deep=19),
        "rcpt_ms": lambda: page(lambda: tenant_scope(tid), tracking.Filters(rcpt=probe["rcpt"])),
        "message_id_ms": lambda: page(lambda: tenant_scope(tid),
                                      tracking.Filters(message_id_header=probe["message_id"])),
        "client_ip_ms": lambda: page(lambda: tenant_scope(tid), tracking.Filters(client_ip=probe["client_ip"])),
        "sender_substring_ms": lambda: page(lambda: tenant_scope(tid), tracking.Filters(sender="s42@")),
        "msp_first_page_ms": lambda: page(msp_scope, tracking.Filters()),
        "msp_rcpt_ms": lambda: page(msp_scope, tracking.Filters(rcpt=probe["rcpt"])),
    }

    def timeline() -> None:
        with tenant_scope(tid), session_scope(cfg) as s:
            tracking.timeline(tracking.detail(s, probe["message_id"]))

    figures["timeline_ms"] = timeline
    for name, fn in figures.items():
        print(f"{name}={timed(fn):.1f}")
    t0 = time.perf_counter()
    rollup.rollup(cfg, since=datetime.now(UTC) - timedelta(days=1))
    print(f"rollup_last_day_s={time.perf_counter() - t0:.2f}")

    def report() -> None:
        with msp_scope(), session_scope(cfg) as s:
            stats.report(s, stats.span(None, None))

    print(f"stats_report_msp_ms={timed(report):.1f}")
    if cfg.database_url.startswith("sqlite"):
        with tenant_scope(tid), session_scope(cfg) as s:
            for label, f in (("msp", tracking.Filters()), ("tenant", tracking.Filters(tenant_id=tid)),
                             ("rcpt", tracking.Filters(rcpt=probe["rcpt"], tenant_id=tid)),
                             ("message_id", tracking.Filters(message_id_header=probe["message_id"], tenant_id=tid))):
                stmt = tracking._statement(f).order_by(Message.received_at.desc(), Message.id.desc()).limit(51)
                sql = str(stmt.compile(compile_kwargs={"literal_binds": True}))
                plan = s.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
                print(f"plan {label}: " + " | ".join(str(row[-1]) for row in plan))
    dispose_engines()


if __name__ == "__main__":
    main()
