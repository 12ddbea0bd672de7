"""``cascade models``: list, promote or roll back registered model versions."""

from __future__ import annotations

import argparse

from distill.settings import Paths
from serving.cli.args import add_common, home_dir


def run(args: argparse.Namespace) -> int:
    from distill.registry import Registry

    registry = Registry(Paths.under(home_dir(args)).registry)
    if args.action == "list":
        for role in ("teacher", "student"):
            current = registry.current(role)
            for meta in registry.versions(role):
                mark = "*" if meta.version == current else " "
                acc = meta.metrics.get("validation_accuracy") or (meta.policy or {}).get("validation", {}).get("student_accuracy")
                print(f"{mark} {role:<8} {meta.version:<32} {meta.kind:<22} parent={meta.parent or '-'} created={meta.created}" + (f" val_acc={acc:.4f}" if acc else ""))
        return 0
    if args.action == "promote":
        if not args.version:
            raise SystemExit("cascade models promote: give the version to promote (see `cascade models list`)")
        registry.promote(args.role, args.version, note="cli")
        print(f"{args.role} now {args.version}")
    else:
        print(f"{args.role} rolled back to {registry.rollback(args.role)}")
    return 0


def add_parser(sub) -> None:
    """The ``models`` subcommand's arguments."""
    p = sub.add_parser("models", help="list, promote or roll back registered model versions", description="Inspect the registry and move the current pointer of a role.")
    add_common(p, data=False)
    p.add_argument("action", choices=("list", "promote", "rollback"))
    p.add_argument("version", nargs="?", help="version to promote")
    p.add_argument("--role", choices=("student", "teacher"), default="student")
    p.set_defaults(func=run)
