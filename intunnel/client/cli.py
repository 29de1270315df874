"""`intunnel http [PORT]`: expose a local port through the relay."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import sys

from .. import portable
from ..wire import netio
from ..wire import protocol as p
from . import config, resolve
from .api import ApiError
from .agent import Agent, complete_server, parse_server
from .inspect.capture import BODY_LIMIT as INSPECT_BODY_LIMIT, Store
from .inspect.server import DEFAULT_HOST as INSPECT_HOST, DEFAULT_PORT as INSPECT_PORT, Inspector
from .inspect.server import parse_address as parse_inspect_address

HELP = "Expose a local HTTP port at your tunnel's public URL."


def add_arguments(parser) -> None:
    parser.add_argument("port", type=int, nargs="?",
                        help="local port to expose (e.g. 3000); without it, the tunnel's local port "
                             "set in the dashboard (followed when it changes)")
    parser.add_argument("--server", help="relay URL, e.g. https://example.com (default: saved config)")
    parser.add_argument("--token", help="tunnel token (default: saved config; see `intunnel config add-token`)")
    parser.add_argument("--name", help="the tunnel to serve, by name (its subdomain): its saved token, or "
                                       "with a login the tunnel of that name (see --create); without "
                                       "--name and a saved token, a login opens an ephemeral tunnel")
    parser.add_argument("--create", action="store_true",
                        help="with --name and a login: create the tunnel when you have none of that name")
    parser.add_argument("--upstream", metavar="HOST:PORT",
                        help="send traffic to HOST:PORT instead of 127.0.0.1:PORT (no PORT needed then)")
    parser.add_argument("--host-header", default="preserve", metavar="rewrite|preserve|VALUE",
                        help="Host header the local app sees: the visitor's (preserve, default), "
                             "HOST:PORT of the upstream (rewrite), or a given value")
    parser.add_argument("--insecure", action="store_true",
                        help="accept a self-signed TLS certificate (testing only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print one line per request")
    add_inspect_arguments(parser)
    rules = parser.add_argument_group(
        "access for this session", "Narrow who may visit while this client runs (the tunnel's own policy "
        "still applies: a visitor must pass both). The rules end with the session.")
    rules.add_argument("--basic-auth", action="append", default=[], metavar="USER:PASS",
                       help="ask visitors for this user name and password (repeatable). The password "
                            "shows in `ps`: prefer --basic-auth-stdin or $" + BASIC_AUTH_ENV)
    rules.add_argument("--basic-auth-stdin", action="store_true",
                       help="read USER:PASS lines from standard input (no password in `ps`); "
                            "$" + BASIC_AUTH_ENV + " may hold such lines too")
    rules.add_argument("--allow-ip", action="append", default=[], metavar="CIDR",
                       help="only visitors from this address or CIDR (repeatable)")
    rules.add_argument("--deny-ip", action="append", default=[], metavar="CIDR",
                       help="never visitors from this address or CIDR (repeatable)")


def add_inspect_arguments(parser) -> None:
    """The inspector's options (intunnel http, intunnel start: one inspector for all the tunnels)."""
    inspect = parser.add_argument_group("inspector", "See every request through the tunnel at a local "
                                        "address (on by default; it stays on this computer)")
    inspect.add_argument("--inspect", metavar="HOST:PORT",
                         help="serve the inspector there (a loopback address; default 127.0.0.1:4040, "
                              "or the next free port)")
    inspect.add_argument("--no-inspect", action="store_true", help="no inspector")
    inspect.add_argument("--inspect-body-limit", type=int, default=None, metavar="BYTES",
                         help="bytes kept of each request and response body (default 65536)")


BASIC_AUTH_ENV = "INTUNNEL_BASIC_AUTH"


def session_rules(args, stdin=None, environ=None) -> dict | None:
    """The Hello's ``access`` from the options (None: none); ValueError saying what is wrong.
    The relay validates them again with its own limits."""
    environ = os.environ if environ is None else environ
    pairs = list(args.basic_auth)
    pairs += [line for line in environ.get(BASIC_AUTH_ENV, "").splitlines() if line.strip()]
    if args.basic_auth_stdin:
        pairs += [line.rstrip("\r\n") for line in (stdin or sys.stdin) if line.strip()]
    for pair in pairs:
        user, colon, password = pair.partition(":")
        if not colon or not user or not password:
            raise ValueError("--basic-auth takes USER:PASS (a user name, a colon, a password)")
    for option, values in (("--allow-ip", args.allow_ip), ("--deny-ip", args.deny_ip)):
        for value in values:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{option} takes an IP address or CIDR such as 10.0.0.0/8, "
                                 f"got {value!r}") from None
    rules = {k: v for k, v in (("basic_auth", pairs), ("ip_allow", [v.strip() for v in args.allow_ip]),
                                ("ip_deny", [v.strip() for v in args.deny_ip])) if v}
    if not rules:
        return None
    try:
        p.encode(p.Hello(access=rules))
    except p.ProtocolError:
        raise ValueError("too many access rules for one session") from None
    return rules


def _say(line: str) -> None:
    print(line, flush=True)


def run(args) -> int:
    try:
        target = resolve.resolve(args, config.load())
    except (ValueError, ApiError) as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while asking the API
        return 130
    if target.note:
        _say(target.note)
    current = [target]  # the ephemeral tunnel now served (renewed when the server deleted it)

    def renew(code: str):
        """A new ephemeral tunnel when the server deleted ours while this client was away (its
        token is then unknown: UNAUTHORIZED).  One deleted while connected (REVOKED_DELETED: on
        the dashboard, on purpose) is not replaced."""
        if code != "UNAUTHORIZED":
            return None
        gone = current[0].name
        try:
            current[0] = resolve.resolve(args, config.load())
        except (ValueError, ApiError) as e:
            _say(f"intunnel: ephemeral tunnel {gone} was deleted while this client was away, "
                 f"and a new one could not be made: {e}")
            return None
        _say(f"ephemeral tunnel {gone} was deleted while this client was away (longer than the "
             f"server keeps one): serving a new one, {current[0].name}")
        return current[0].token

    try:
        return _run(args, target.server, target.token,
                    renew if target.ephemeral_id is not None else None)
    finally:
        if current[0].ephemeral_id is not None:
            _delete_ephemeral(current[0])


def _delete_ephemeral(target: resolve.Target) -> None:
    """Before the process exits.  A second Ctrl-C or SIGTERM meanwhile gives up on it: the
    relay deletes the tunnel after relay_ephemeral_grace."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        _say(resolve.delete_ephemeral(target))
    except KeyboardInterrupt:
        _say(f"ephemeral tunnel {target.name} not deleted: the server deletes it shortly")


def _run(args, server: str, token: str, renew_token=None) -> int:
    server, note = complete_server(server)
    if note:
        print(f"intunnel: {note}", file=sys.stderr, flush=True)
    try:
        host, port = local_target(args)
        parse_server(server)
        rules = session_rules(args)
        where = inspect_options(args)
    except ValueError as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2
    agent = Agent(server, token, port, upstream_host=host, host_header=args.host_header,
                  insecure=args.insecure, verbose=args.verbose, say=_say, access=rules,
                  upstream_given=bool(args.upstream), renew_token=renew_token, protocol="http")
    return netio.run(_main(agent, where))


def inspect_options(args):
    """(host, port, next free port, body limit) of the inspector, None with --no-inspect;
    ValueError saying what is wrong."""
    limit = getattr(args, "inspect_body_limit", None)
    if limit is not None and not 0 <= limit <= 64 << 20:
        raise ValueError("--inspect-body-limit must be between 0 and 67108864 bytes")
    if getattr(args, "no_inspect", False):
        return None
    given = getattr(args, "inspect", None)
    host, port = parse_inspect_address(given) if given else (INSPECT_HOST, INSPECT_PORT)
    return host, port, not given, INSPECT_BODY_LIMIT if limit is None else limit


def local_target(args) -> tuple[str, int | None]:
    """Where visitors go: (host, port) from --upstream or PORT; the port is None with neither
    (the tunnel's stored local port then, from the relay).  ValueError saying what is wrong."""
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError("PORT must be between 1 and 65535")
    if args.upstream:
        h, sep, pt = args.upstream.rpartition(":")
        if not sep or not pt.isdigit() or not 1 <= int(pt) <= 65535:
            raise ValueError("--upstream must be HOST:PORT")
        return h.strip("[]") or "127.0.0.1", int(pt)
    return "127.0.0.1", args.port


def on_stop_signals(loop, stop) -> None:
    """Call ``stop`` on Ctrl-C and SIGTERM: the event loop's signal handlers on Unix, plain
    ``signal.signal`` handlers on Windows (portable.on_signal), where Ctrl-C is SIGINT too."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        portable.on_signal(loop, sig, stop)


async def open_inspector(where, agents: list) -> bool:
    """Start the inspector ``where`` says (None: --no-inspect) for ``agents``; False, the reason
    said in one line, when it can't listen."""
    if where is None:
        return True
    host, port, next_free, limit = where
    first = agents[0]
    inspector = Inspector(Store(body_limit=limit), lambda: (first.upstream_host, first.local_port),
                          lambda: first.url)
    try:
        await inspector.start(host, port, next_free)
    except OSError as e:
        print(f"intunnel: the inspector can't listen on {host}:{port}: {e.strerror or e} "
              f"(choose another with --inspect HOST:PORT, or --no-inspect)", file=sys.stderr, flush=True)
        return False
    for agent in agents:
        agent.inspector = inspector
    return True


async def _main(agent: Agent, where=None) -> int:
    """Run until the agent gives up or Ctrl-C/SIGTERM: then exit at once."""
    loop = asyncio.get_running_loop()
    if not await open_inspector(where, [agent]):
        return 2
    task = asyncio.ensure_future(agent.run())
    on_stop_signals(loop, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        _say("stopped")
        return 0
    finally:
        if agent.inspector is not None:
            agent.inspector.close()
