"""The data owner's commands: serve, read and back up the ledger, evaluate a synthetic set at the owner."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_owner_serve(a: argparse.Namespace) -> int:
    import logging

    from owner_node.config import OwnerConfig
    from owner_node.grpc_server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(OwnerConfig.load(a.config))
    return 0


def cmd_budget(a: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from owner_node.budget import Budget, format_budget
    from owner_node.budget_page import write_budget_page
    from owner_node.config import OwnerConfig
    from owner_node.ledger import Ledger

    config = OwnerConfig.load(a.config)
    if not config.ledger_path.exists():
        print(f"no ledger yet at {config.ledger_path}: nothing released")
    ledger = Ledger(config.ledger_path, config.ledger_on_network_filesystem)
    if a.cancel_plan:
        plan = ledger.cancel_plan(a.cancel_plan)
        print(f"cancelled plan {plan.plan_id}: {plan.used} of {plan.event.count} releases made stay spent\n")
    rows = ledger.rows()
    print(format_budget(Budget(config).report([r.event for r in rows], ledger.outstanding())))
    plans = ledger.plans()
    if plans:
        print("\nrun plans:")
        print(f"  {'plan id':<20} {'made':>6} {'planned':>7} {'sigma':>8} {'q':>9}  state")
        for p in plans:
            state = "cancelled" if p.cancelled else ("open" if p.outstanding else "complete")
            print(
                f"  {p.plan_id:<20} {p.used:>6} {p.event.count:>7} {p.event.noise_multiplier:>8.4f} "
                f"{p.event.sample_rate:>9.6f}  {state}"
            )
    if rows:
        print("\nledger:")
        print(f"  {'request id':<28} {'state':<9} {'draws':>5} {'sigma':>8} {'q':>9}")
        for r in rows:
            print(
                f"  {r.request_id:<28} {r.state:<9} {r.event.count:>5} "
                f"{r.event.noise_multiplier:>8.4f} {r.event.sample_rate:>9.6f}"
            )
    if a.audit:
        audit = ledger.audit_rows()
        broken = ledger.verify_audit()
        chain = "intact" if broken is None else f"BROKEN at row {broken} (rows altered or removed)"
        print(
            f"\naudit trail: {len(audit)} requests, {sum(r.decision == 'refused' for r in audit)} refused; "
            f"chain {chain}"
        )
        print(f"  {'time (UTC)':<19} {'peer':<32} {'kind':<17} {'request id':<24} {'decision':<8} {'code':<18} eps")
        for r in audit:
            when = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            eps = "" if r.epsilon_committed is None else f"{r.epsilon_committed:.4f}"
            print(
                f"  {when:<19} {r.peer[:32]:<32} {r.kind:<17} {r.request_id[:24]:<24} {r.decision:<8} "
                f"{r.code:<18} {eps}"
            )
    if a.report:
        write_budget_page(config, ledger, Path(a.report))
        print(f"\nwritten: {a.report}/budget.html (open it in a browser), budget.png, budget.json")
    ledger.close()
    return 0


def cmd_ledger_backup(a: argparse.Namespace) -> int:
    from owner_node.config import OwnerConfig
    from owner_node.ledger_backup import backup_ledger

    s = backup_ledger(OwnerConfig.load(a.config).ledger_path, Path(a.destination))
    print(
        f"backed up {s['source']} to {s['destination']}: {s['rows']} releases "
        f"({s['released']} released, {s['reserved']} reserved), {s['bytes']} bytes, integrity ok"
    )
    return 0


def cmd_owner_evaluate(a: argparse.Namespace) -> int:
    from owner_node.config import OwnerConfig
    from owner_node.evaluation import NOTICE, owner_evaluate
    from shared.evaluation_config import EvaluationConfig
    from shared.metrics import format_metrics

    cfg = EvaluationConfig(runs=a.eval_runs, epochs=a.eval_epochs, width=a.eval_width)
    report = owner_evaluate(OwnerConfig.load(a.config), a.synthetic, cfg, a.out, not a.no_progress)
    acc = report["accuracy"]
    print(f"\nowner's held-out split ({report['held_out_images']} images), {cfg.runs} trainings:")
    print(f"accuracy {100 * acc['mean']:.2f}% +- {100 * acc['std']:.2f}")
    print(format_metrics(report["metrics"]))
    print(f"\nwritten: {report['out']}/owner_evaluation.json, {report['out']}/confusion_matrix.png")
    print(NOTICE)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """owner-serve, budget, ledger-backup, owner-evaluate"""
    o = sub.add_parser("owner-serve", help="run the owner service (gRPC) with the limits in the owner's config")
    o.add_argument("--config", required=True, help="the owner's config file (TOML)")
    o.set_defaults(func=cmd_owner_serve)

    b = sub.add_parser("budget", help="print an owner's ledger and remaining budget")
    b.add_argument("--config", required=True, help="the owner's config file (TOML)")
    b.add_argument(
        "--cancel-plan", metavar="PLAN_ID", help="free what an abandoned run plan still holds in reserve (operator)"
    )
    b.add_argument(
        "--audit", action="store_true", help="also list every request in the audit trail (who, what, decision)"
    )
    b.add_argument(
        "--report", metavar="DIR", help="write budget.html (self-contained), budget.png and budget.json into DIR"
    )
    b.set_defaults(func=cmd_budget)

    lb = sub.add_parser(
        "ledger-backup", help="copy an owner's ledger consistently, even while its service runs (never overwrites)"
    )
    lb.add_argument("--config", required=True, help="the owner's config file (TOML)")
    lb.add_argument("destination", help="the backup file to create (must not exist)")
    lb.set_defaults(func=cmd_ledger_backup)

    oe = sub.add_parser(
        "owner-evaluate",
        help="at the owner: train on a synthetic.pt, test on the owner's held-out split ([data] holdout); "
        "figures stay at the owner",
    )
    oe.add_argument("synthetic", help="the synthetic.pt the distiller produced")
    oe.add_argument("--config", required=True, help="the owner's config file (TOML)")
    oe.add_argument("--out", help="default: owner_evaluation/<name> beside the owner's ledger")
    oe.add_argument("--eval-runs", type=int, default=3)
    oe.add_argument("--eval-epochs", type=int, default=300)
    oe.add_argument("--eval-width", type=int, default=128)
    oe.add_argument("--no-progress", action="store_true")
    oe.set_defaults(func=cmd_owner_evaluate)
