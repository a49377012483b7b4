"""The ``xmpp-gateway`` command."""

from __future__ import annotations

import argparse
import base64
import json
import sys

from gateway import __version__


def _load_or_exit(path: str):
    from gateway.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        print(f"{path}: {len(e.problems)} problem(s):", file=sys.stderr)
        for p in e.problems:
            print("  " + p.format(path), file=sys.stderr)
        sys.exit(1)


def exit_with(code: int) -> None:
    """End the process with ``code`` even from an atexit hook, where sys.exit is ignored."""
    if code:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def cmd_example_config(args) -> int:
    """Print a file shipped in the package: the annotated example config, the unit, the server snippets."""
    from importlib.resources import files

    print(files("gateway.data").joinpath(EXAMPLES[args.what]).read_text(encoding="utf-8"), end="")
    return 0


#: What ``example-config`` can print, by the name given on the command line.
EXAMPLES = {"config": "gateway.toml", "systemd": "xmpp-gateway.service", "systemd-port-25": "smtp-port-25.conf",
            "systemd-port-113": "identd-port-113.conf",
            "prosody": "prosody-component.cfg.lua", "ejabberd": "ejabberd-component.yml"}


def cmd_check_config(args) -> int:
    config = _load_or_exit(args.config)
    names = ", ".join(f"{c.domain} ({c.adapter})" for c in config.components)
    print(f"{args.config}: OK: {len(config.components)} component(s): {names}")
    return 0


def cmd_run(args) -> int:
    config = _load_or_exit(args.config)
    if args.log_format:
        config.log["format"] = args.log_format
    from twisted.internet import reactor

    from gateway.logs import start_logging
    from gateway.service import GatewayService

    from gateway.systemd import Notifier

    start_logging(config.log["format"], config.log["level"], config.secrets())
    gateway = GatewayService(config, reactor)
    notifier = Notifier.from_environ(reactor)
    _reload_on_sighup(reactor, gateway, args.config, notifier)
    reactor.callWhenRunning(gateway.startService)
    if notifier is not None:
        reactor.callWhenRunning(notifier.start, gateway)
        reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.run()
    return gateway.exit_code


def _reload_on_sighup(reactor, gateway, path: str, notifier=None) -> None:
    """SIGHUP reloads the config (gateway/reload.py) instead of killing the process."""
    import signal

    from gateway.reload import HOOKS, reload

    def on_reactor():
        if notifier is not None:
            notifier.reloading()
        applied = reload(gateway, path)
        if notifier is not None:
            notifier.reloaded(gateway, applied)
        return applied

    HOOKS["reload"] = on_reactor
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(on_reactor))


def _with_registry(args, work):
    """Run ``work(registry)`` against the configured registry, outside any running gateway."""
    config = _load_or_exit(args.config)
    from twisted.internet import defer, task

    from gateway.registry import SQLRegistry

    result = {}

    @defer.inlineCallbacks
    def main(reactor):
        registry = SQLRegistry(config.registry["url"], config.registry["secret_key"],
                               config.gateway["instance_id"] + "-cli",
                               old_keys=config.registry["old_secret_keys"])
        try:
            yield registry.open()
            result["value"] = yield work(registry)
        except Exception as e:          # raised again below, outside the reactor, for the command to report
            result["error"] = e
        finally:
            yield registry.close()

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise
    if "error" in result:
        from gateway.registry.backup import SchemaTooNew

        if isinstance(result["error"], SchemaTooNew):
            print(f"{args.config}: {result['error']}", file=sys.stderr)
            sys.exit(2)
        raise result["error"]
    return result.get("value")


def cmd_backup(args) -> int:
    import sqlite3

    from gateway.registry.backup import SchemaTooNew, backup_sqlite, sqlite_path

    config = _load_or_exit(args.config)
    path = sqlite_path(config.registry["url"])
    if path is None:
        print("registry.url is PostgreSQL: back it up with pg_dump, e.g. "
              "pg_dump --format=custom --file=FILE DBNAME (docs/operations.md, Backups)", file=sys.stderr)
        return 1
    try:
        pages = backup_sqlite(path, args.file)
    except SchemaTooNew as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as e:
        print(f"backup failed: {e}", file=sys.stderr)
        return 1
    print(f"{path} copied to {args.file} ({pages} pages, mode 0600)")
    return 0


def cmd_registry(args) -> int:
    from twisted.internet import defer

    from gateway.registry.crypto import KeyError_

    if args.action == "list":
        regs = _with_registry(args, lambda r: r.list_registrations())
        unreadable = 0
        for reg in regs:
            mark = ""
            if reg.secrets_unreadable:
                unreadable += 1
                mark = "\tsecrets undecryptable with the configured keys"
            print(f"{reg.component}\t{reg.jid}\t{reg.foreign_id or '-'}{mark}")
        print(f"{len(regs)} registration(s)" + (f", {unreadable} with secrets no configured key opens "
              "(see docs/operations.md, Secret key and rotation)" if unreadable else ""), file=sys.stderr)
    elif args.action == "export":
        exported = {}

        @defer.inlineCallbacks
        def export(registry):
            exported["kdf_salt"] = base64.b64encode(registry.kdf_salt).decode()
            exported["registrations"] = yield registry.export()

        _with_registry(args, export)
        # The salt is not secret: with a passphrase key, the importing registry needs it to open the tokens.
        text = json.dumps({"version": 1, **exported}, indent=2)
        if args.file and args.file != "-":
            with open(args.file, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        else:
            print(text)
    else:
        if not args.file:
            print("registry import needs a FILE (or - for standard input)", file=sys.stderr)
            return 1
        raw = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        try:
            data = json.loads(raw)
            rows = data["registrations"]
            salt = base64.b64decode(data["kdf_salt"]) if data.get("kdf_salt") else None
        except (ValueError, KeyError, TypeError) as e:
            print(f"{args.file}: not a registry export: {e}", file=sys.stderr)
            return 1
        try:
            count = _with_registry(args, lambda r: r.import_(rows, salt))
        except KeyError_ as e:
            print(f"{args.file}: {e}; nothing after the first such row was imported", file=sys.stderr)
            return 1
        print(f"imported {count} registration(s)")
    return 0


def cmd_rotate_key(args) -> int:
    """
    Re-seal every registration's secrets with registry.secret_key, opening
    them with it or any of registry.old_secret_keys. Safe while the gateway
    runs (a row changed meanwhile keeps its change) and idempotent.
    """
    result = _with_registry(args, lambda r: r.rotate_secrets(args.batch))
    unreadable = result["unreadable"]
    print(f"{result['rotated']} re-encrypted, {result['current']} already current, "
          f"{result['changed']} changed meanwhile (left as written), {len(unreadable)} cannot be decrypted")
    for component, jid in unreadable:
        print(f"{component}\t{jid}\tcannot be decrypted with any configured key: left as it is")
    if unreadable:
        print("some secrets cannot be decrypted: add the key they were sealed with to registry.old_secret_keys "
              "and run rotate-key again, or have those users register again", file=sys.stderr)
        return 1
    return 0


def cmd_queue(args) -> int:
    """Dead letters for the operator: see why a row was parked, put it back, or drop it."""
    import datetime

    if args.action == "list":
        items = _with_registry(args, lambda r: r.list_queue(parked_only=not args.all, component=args.component))
        for item in items:
            when = datetime.datetime.fromtimestamp(item.created_at, datetime.timezone.utc)
            state = "parked" if item.parked_at is not None else "queued"
            print(f"{item.id}\t{item.component}\t{item.direction}\t{item.jid}\t{state}\t"
                  f"{when:%Y-%m-%d %H:%M:%S}Z\t{item.last_error or ''}")
        print(f"{len(items)} {'row' if args.all else 'parked row'}(s)", file=sys.stderr)
        return 0
    if not args.ids:
        print(f"queue {args.action} needs the ids of parked rows (from `queue list`)", file=sys.stderr)
        return 1
    if args.action == "retry":
        count = _with_registry(args, lambda r: r.retry_parked(args.ids))
        print(f"{count} parked row(s) queued again")
    else:
        count = _with_registry(args, lambda r: r.drop(args.ids))
        print(f"{count} parked row(s) dropped")
    return 0 if count == len(set(args.ids)) else 1


def cmd_genkey(args) -> int:
    from gateway.registry.crypto import SecretBox

    print(SecretBox.generate())
    return 0


def cmd_config_reference(args) -> int:
    from gateway.docs import config_reference

    sys.stdout.write(config_reference())
    return 0


#: sysexits.h: what an MTA's pipe transport understands.
EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 67, 69, 75, 78


def cmd_deliver(args) -> int:
    """
    Hand one message from standard input to the running gateway, for an MTA that
    owns port 25 and pipes mail on (Postfix pipe, Exim, ...). It goes through the
    gateway's own SMTP listener on loopback, so it is checked, stored and bounced
    exactly like mail that arrives by SMTP; exit codes follow sysexits.
    """
    import re
    import smtplib

    from gateway.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    data = sys.stdin.buffer.read()
    if not data.strip():
        print("deliver: no message on standard input", file=sys.stderr)
        return EX_DATAERR
    domain = args.recipient[0].rpartition("@")[2].lower()
    comp = next((c for c in config.components if c.adapter == "email"
                 and c.options["mail_domain"].lower() == domain), None)
    if comp is None:
        print(f"deliver: no email component serves @{domain}", file=sys.stderr)
        return EX_NOUSER
    m = re.match(r"^tcp:(\d+)(?::interface=([^:]+))?", comp.options["smtp_listen"])
    if not m:
        print(f"deliver: {comp.domain}'s smtp_listen must be a tcp: endpoint for deliver to use it",
              file=sys.stderr)
        return EX_CONFIG
    host = m.group(2) or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        with smtplib.SMTP(host, int(m.group(1)), timeout=120) as smtp:
            refused = smtp.sendmail(args.sender or "", args.recipient, data)
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
        print(f"deliver: {code} {text.decode(errors='replace')}", file=sys.stderr)
        return EX_NOUSER if code == 550 else (EX_TEMPFAIL if code < 500 else EX_UNAVAILABLE)
    except smtplib.SMTPResponseException as e:
        print(f"deliver: {e.smtp_code} {e.smtp_error.decode(errors='replace')}", file=sys.stderr)
        return EX_TEMPFAIL if 400 <= e.smtp_code < 500 else EX_UNAVAILABLE
    except (OSError, smtplib.SMTPException) as e:
        print(f"deliver: the gateway is not reachable at {host}:{m.group(1)}: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    if refused:
        print(f"deliver: refused for {', '.join(refused)}", file=sys.stderr)
        return EX_NOUSER
    return EX_OK


def cmd_demo(args) -> int:
    from gateway.demo import run_demo

    return run_demo(args.dir, args.log_format)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xmpp-gateway",
                                     description="Bridge XMPP to SMS, email and IRC as XEP-0114 components.")
    parser.add_argument("--version", action="version", version=f"xmpp-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("config")
    p.add_argument("--log-format", choices=("text", "json"), help="overrides log.format")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="report every problem in a config file")
    p.add_argument("config")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("registry", help="list, export or import registrations")
    p.add_argument("action", choices=("list", "export", "import"))
    p.add_argument("file", nargs="?", help="export: where to write (default stdout); import: what to read")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("queue", help="list, retry or drop parked messages (dead letters)")
    p.add_argument("action", choices=("list", "retry", "drop"))
    p.add_argument("ids", nargs="*", help="retry/drop: ids of parked rows")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--all", action="store_true", help="list: every queued row, not only parked ones")
    p.add_argument("--component", help="list: one component's rows only")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("backup", help="copy the SQLite registry (registrations and queue) while the gateway runs")
    p.add_argument("file", nargs="?", help="where to write the copy (mode 0600)")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("rotate-key", help="re-encrypt every user's stored secrets with registry.secret_key")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--batch", type=int, default=200, help="rows per transaction")
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser("genkey", help="print a new key for registry.secret_key")
    p.set_defaults(func=cmd_genkey)

    p = sub.add_parser("example-config", help="print the annotated example config (or the systemd unit, "
                       "the Prosody or ejabberd snippet)")
    p.add_argument("what", nargs="?", choices=sorted(EXAMPLES), default="config")
    p.set_defaults(func=cmd_example_config)

    p = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser("deliver", help="deliver one mail from standard input (for an MTA's pipe transport)")
    p.add_argument("recipient", nargs="+")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--sender", "-f", default="", help="envelope sender (empty for bounces)")
    p.set_defaults(func=cmd_deliver)

    what = "start a local Prosody, ngircd and SMS simulator, and the gateway with its echo, SMS, email and IRC adapters"
    p = sub.add_parser("demo", help=what, description=what + "; a second run reuses the first's logins and keys")
    p.add_argument("--dir", default="demo-run", help="where the demo keeps its files")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_demo)

    args, extra = parser.parse_known_args(argv)
    # argparse fills optional positionals before it reads options: `registry export --config F
    # backup.json` (the order the docs use) leaves the file over. Take it; anything else is an error.
    if args.command in ("registry", "queue", "backup") and extra and not extra[0].startswith("-"):
        if args.command in ("registry", "backup") and args.file is None:
            args.file, extra = extra[0], extra[1:]
        elif args.command == "queue":
            args.ids, extra = [*args.ids, *[e for e in extra if not e.startswith("-")]], [
                e for e in extra if e.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "backup" and not args.file:
        parser.error("backup needs a FILE to write")
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
