"""The privacy officer's page: epsilon committed over time against the budget, the runs, the refusals.

``write_budget_page`` writes ``budget.html`` (self-contained: no scripts, no network; the chart is
embedded) with ``budget.png`` and ``budget.json`` beside it, all from the owner's ledger and its
audit trail. Reading the ledger never changes it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path

from owner_node.budget import Budget
from owner_node.config import OwnerConfig
from owner_node.ledger import AuditRow, Ledger
from shared.accounting import AccountingError
from shared.wire.privacy_event import SampledGaussianEvent

# A ledger written before the audit trail existed: the curve is rebuilt from its rows at most this often.
MAX_REBUILT_POINTS = 60


@dataclass(frozen=True)
class Point:
    at: float
    epsilon: float


def _when(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def committed_over_time(ledger: Ledger, rule: Budget) -> tuple[list[Point], str]:
    """Epsilon committed after each request (from the audit trail), or rebuilt from the ledger's rows."""
    points = [Point(r.at, r.epsilon_committed) for r in ledger.audit_rows() if r.epsilon_committed is not None]
    if points:
        return points, "audit trail (epsilon committed after each request)"
    rows = ledger.rows()
    plans = ledger.plans()
    times = ledger.plan_times()
    moments = sorted({r.reserved_at for r in rows} | {t[0] for t in times.values()})
    if len(moments) > MAX_REBUILT_POINTS:
        step = len(moments) / MAX_REBUILT_POINTS
        moments = [moments[int(i * step)] for i in range(MAX_REBUILT_POINTS)] + [moments[-1]]
    out = []
    for t in moments:
        made = [r.event for r in rows if r.reserved_at <= t]
        held = []
        for p in plans:
            reserved_at, cancelled_at = times[p.plan_id]
            if reserved_at <= t and (cancelled_at is None or cancelled_at > t):
                used = sum(r.event.count for r in rows if r.plan_id == p.plan_id and r.reserved_at <= t)
                left = p.event.count - used
                if left > 0:
                    held.append(SampledGaussianEvent(p.event.noise_multiplier, p.event.sample_rate, left))
        try:
            out.append(Point(t, rule.epsilon(made + held)))
        except AccountingError:
            continue
    return out, "rebuilt from the ledger's releases and plans (this ledger predates the audit trail)"


def _chart(points: list[Point], refusals: list[AuditRow], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=110)
    if points:
        xs = [dt.datetime.fromtimestamp(p.at, dt.UTC) for p in points]
        ax.step(xs, [p.epsilon for p in points], where="post", color="#1f5fa8", lw=2, label="epsilon committed")
    ax.axhline(budget, color="#b22222", ls="--", lw=1.5, label=f"budget (epsilon {budget:g})")
    if refusals:
        ys = [r.epsilon_committed if r.epsilon_committed is not None else budget for r in refusals]
        xs = [dt.datetime.fromtimestamp(r.at, dt.UTC) for r in refusals]
        ax.scatter(xs, ys, marker="x", color="#d9822b", s=40, zorder=3, label=f"refused requests ({len(refusals)})")
    top = max([budget] + [p.epsilon for p in points])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("epsilon")
    ax.set_title("Privacy budget: epsilon committed over time (spent plus held by accepted run plans)")
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(headers: list[str], rows: list[list[object]], empty: str) -> str:
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers) if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin-top: 0.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } .figures td:first-child { font-weight: bold; }
.empty { color: #666; font-style: italic; } .bad { color: #b22222; font-weight: bold; } .ok { color: #2e7d32; }
"""


def write_budget_page(config: OwnerConfig, ledger: Ledger, out: Path) -> dict:
    """Write budget.html, budget.png and budget.json into ``out``; return the JSON's content."""
    out.mkdir(parents=True, exist_ok=True)
    rule = Budget(config)
    report = rule.report(ledger.events(), ledger.outstanding())
    points, source = committed_over_time(ledger, rule)
    audit = ledger.audit_rows()
    refusals = [r for r in audit if r.decision == "refused"]
    broken = ledger.verify_audit()
    png = out / "budget.png"
    _chart(points, refusals, config.epsilon, png)

    plans = ledger.plans()
    times = ledger.plan_times()
    plan_rows = [
        [
            p.plan_id,
            _when(times[p.plan_id][0]),
            p.used,
            p.event.count,
            f"{p.event.noise_multiplier:.4f}",
            f"{p.event.sample_rate:.6f}",
            "cancelled" if p.cancelled else ("open" if p.outstanding else "complete"),
        ]
        for p in plans
    ]
    rows = ledger.rows()
    unplanned = [r for r in rows if r.plan_id is None]
    peers: dict[str, list[int]] = {}
    for r in audit:
        counts = peers.setdefault(r.peer, [0, 0])
        counts[r.decision == "refused"] += 1
    data = {
        "owner_id": config.owner_id,
        "budget": {"epsilon": config.epsilon, "delta": config.delta, "accountant": config.accountant},
        "epsilon_spent_prv": report.epsilon_prv,
        "epsilon_spent_rdp": report.epsilon_rdp,
        "epsilon_committed": report.epsilon_committed,
        "epsilon_remaining": report.epsilon_remaining,
        "releases": len(rows),
        "draws": report.num_draws,
        "plans": [
            dict(zip(("plan_id", "reserved", "made", "planned", "sigma", "q", "state"), r, strict=True))
            for r in plan_rows
        ],
        "curve_source": source,
        "curve": [{"at": p.at, "epsilon_committed": p.epsilon} for p in points],
        "refusals": [
            {"at": r.at, "peer": r.peer, "kind": r.kind, "request_id": r.request_id, "code": r.code, "detail": r.detail}
            for r in refusals
        ],
        "peers": {peer: {"answered": c[0], "refused": c[1]} for peer, c in peers.items()},
        "audit_rows": len(audit),
        "audit_chain_intact": broken is None,
        "audit_chain_broken_at": broken,
    }
    (out / "budget.json").write_text(json.dumps(data, indent=2))

    chart = base64.b64encode(png.read_bytes()).decode()
    chain = (
        "<span class='ok'>intact</span>"
        if broken is None
        else f"<span class='bad'>BROKEN at row {broken}: rows were altered or removed</span>"
    )
    figures = _table(
        ["", ""],
        [
            [
                "budget",
                f"epsilon {config.epsilon:g} at delta {config.delta:g}, enforced with {config.accountant.upper()}",
            ],
            [
                "committed",
                f"{report.epsilon_committed:.4f} (spent plus {report.reserved_releases} planned releases held)",
            ],
            ["spent", f"{report.epsilon_prv:.4f} (PRV), {report.epsilon_rdp:.4f} (RDP)"],
            ["remaining", f"{report.epsilon_remaining:.4f}"],
            ["releases / draws", f"{len(rows)} / {report.num_draws}"],
            ["requests audited", f"{len(audit)} ({len(refusals)} refused)"],
        ],
        "",
    ).replace("<table>", "<table class='figures'>")
    refusal_rows = [[_when(r.at), r.peer, r.kind, r.request_id, r.code, r.detail] for r in refusals[-200:]]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Privacy budget of owner {html.escape(config.owner_id)}</title><style>{STYLE}</style></head>
<body>
<h1>Privacy budget of owner <code>{html.escape(config.owner_id)}</code></h1>
<p>Written {html.escape(_when(dt.datetime.now(dt.UTC).timestamp()))} from the ledger
<code>{html.escape(str(config.ledger_path))}</code>. Audit trail hash chain: {chain}.</p>
{figures}
<h2>Epsilon committed over time</h2>
<img alt="epsilon committed over time against the budget" src="data:image/png;base64,{chart}" width="990">
<p style="font-size:0.85em;color:#555">Source: {html.escape(source)}.</p>
<h2>Runs (accepted plans)</h2>
{_table(["plan id", "reserved", "made", "planned", "sigma", "q", "state"], plan_rows, "no run plans in the ledger")}
<p>{len(unplanned)} releases outside any plan.</p>
<h2>Refused requests</h2>
{_table(["time", "peer", "kind", "request id", "code", "reason"], refusal_rows, "no request was refused")}
<h2>Who asked</h2>
{_table(["peer", "answered", "refused"], [[p, c[0], c[1]] for p, c in peers.items()], "no requests audited yet")}
</body></html>
"""
    (out / "budget.html").write_text(page, encoding="utf-8")
    return data
