"""`csu-collector db upgrade`: bring a collector database to this version's schema (store/migrations.py).

PostgreSQL databases are upgraded by this command only (a `serve` refuses to start on an older schema,
so that no collector alters a shared database on its own); a SQLite file is also upgraded by `serve`
when it opens it. Running it again is harmless: it applies only what is pending.
"""

from __future__ import annotations

import argparse

from edge_agent.collector.store import DB_ERRORS, LATEST, db_exit, upgrade_schema


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `db upgrade`."""
    db = subparsers.add_parser("db", help="the collector database's schema")
    actions = db.add_subparsers(dest="db_action", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="apply the pending schema migrations")
    upgrade.add_argument("--db", required=True, help="SQLite file or postgresql://user@host/db")
    upgrade.set_defaults(handler=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    """Apply the pending migrations and say which."""
    try:
        before, applied = upgrade_schema(args.db)
    except DB_ERRORS as error:
        return db_exit(error)
    if not applied:
        print(f"schema already at version {before} (current: {LATEST})")
        return 0
    for migration in applied:
        print(f"applied {migration.version}: {migration.name}")
    print(f"schema upgraded from version {before} to {applied[-1].version}")
    return 0
