"""`csu-collector user add | list | disable | enable`: the console's accounts, from the command line.

The first admin is made here (the console's Users page needs one to log in); the password is read
from the terminal without echo, or from standard input when it is not a terminal (for scripts).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from edge_agent.collector.console.accounts import (
    AccountError,
    Passwords,
    check_password,
    check_role,
    check_user_name,
)
from edge_agent.collector.console.data import Account, DuplicateError, open_console_data
from edge_agent.collector.paths import add_keys_and_audit, audit_log_path
from edge_agent.collector.store import DB_ERRORS, db_exit
from edge_agent.formats.audit import AuditLog


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `user` and its actions."""
    parser = subparsers.add_parser("user", help="console accounts (add, list, disable, enable)")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a console user")
    add.add_argument("name", help="user name: the officer name sent to devices")
    add.add_argument("--role", required=True, help="operator, investigator or admin")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for action in ("list", "disable", "enable"):
        sub = actions.add_parser(action, help=f"{action} console users")
        if action != "list":
            sub.add_argument("name")
    for sub in actions.choices.values():
        sub.add_argument(
            "--db", required=True, help="the collector store: a SQLite file or a postgresql:// URL"
        )
        add_keys_and_audit(sub)
    parser.set_defaults(handler=user_command)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("password: the two entries differ")
    return first


def user_command(args: argparse.Namespace) -> int:
    """Run one `user` action; exit 0 done, 1 refused or the store out of reach, 2 bad input."""
    audit = AuditLog(audit_log_path(args.keys, args.audit))
    if args.action == "add":
        try:
            name, role = check_user_name(args.name), check_role(args.role)
            password = check_password(_password(args))
        except AccountError as error:
            print(f"user add: {error}", file=sys.stderr)
            return 2
    try:
        data = open_console_data(args.db)
    except DB_ERRORS as error:
        return db_exit(error, sys.stderr)
    try:
        if args.action == "list":
            for account in data.users():
                state = "disabled" if account.disabled else "active"
                print(f"{account.name}\t{account.role}\t{state}")
            return 0
        if args.action == "add":
            account = Account(name, role.value, Passwords().hash(password), time.time())
            try:
                data.add_user(account)
            except DuplicateError as error:
                print(f"user add: {error}", file=sys.stderr)
                return 1
            audit.append(action="console-user-add", user="(command line)", name=name, role=role.value)
            print(f"user {name} added ({role.value})")
            return 0
        disabled = args.action == "disable"
        if not data.set_disabled(args.name, disabled):
            print(f"user {args.action}: no user {args.name!r}", file=sys.stderr)
            return 1
        if disabled:
            data.delete_sessions_of(args.name)
        audit.append(action=f"console-user-{args.action}", user="(command line)", name=args.name)
        print(f"user {args.name} {args.action}d")
        return 0
    finally:
        data.close()
