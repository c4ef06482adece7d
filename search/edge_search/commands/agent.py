"""`edge-search agent serve|status`: run the board agent, or ask one how it is.

``edge-search agent serve --token-file ~/.edge-search-token --profile jetson-nano`` serves on
127.0.0.1:7070 unless ``--host`` says otherwise (a missing token file is created with a new random
token, mode 0600; ``--ssl-certfile``/``--ssl-keyfile`` serve HTTPS). ``edge-search agent status URL
--token-file F [--ca-file PEM]`` prints the agent's state, queue length, last heartbeat and board
state (``--json`` for machines); exit 1 when it does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/edge-search/agent-models")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `serve` and `status` sub-commands."""
    sub = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    sub.required = True
    s = sub.add_parser("serve", help="run the agent on this board",
                       description="measure models sent by searches elsewhere, on this board")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    s.add_argument("--port", type=int, default=7070, help="port (default 7070)")
    s.add_argument("--token-file", type=Path, required=True,
                   help="file holding the bearer token (created with a random token when missing)")
    s.add_argument("--profile", default="host", help="this board's device profile (default: host)")
    s.add_argument("--profiles", type=Path, action="append", default=[], metavar="DIR",
                   help="extra device profile folder or file (repeatable)")
    s.add_argument("--cores", default=None, metavar="0,1,...", help="cores measurements are pinned to")
    s.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"model cache folder (default {DEFAULT_CACHE})")
    s.add_argument("--max-model-mb", type=float, default=256.0, help="largest model accepted (default 256 MB)")
    s.add_argument("--max-cache-mb", type=float, default=2048.0, help="model cache size (default 2048 MB)")
    s.add_argument("--max-measure-time", type=float, default=120.0, metavar="SECONDS",
                   help="longest repetition phase a client may ask for (default 120 s)")
    s.add_argument("--openapi", action="store_true", help="serve /openapi.json (API tooling)")
    s.add_argument("--ssl-certfile", default=None, help="TLS certificate (serve HTTPS)")
    s.add_argument("--ssl-keyfile", default=None, help="TLS private key")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    st = sub.add_parser("status", help="show an agent's state, queue length and last heartbeat")
    st.add_argument("url", help="agent URL, e.g. http://board:7070")
    st.add_argument("--token-file", type=Path, default=None,
                    help="file holding the bearer token (default: $EDGE_SEARCH_AGENT_TOKEN)")
    st.add_argument("--ca-file", type=Path, default=None, metavar="PEM",
                    help="CA (or self-signed certificate) an https:// agent's certificate must chain to "
                         "(default: the system's trust store)")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    st.add_argument("--json", action="store_true", help="print the agent's health JSON")


def run(args: argparse.Namespace) -> int:
    """Dispatch to `serve` or `status`."""
    if args.agent_command == "serve":
        return _serve(args)
    return _status(args)


def _serve(args: argparse.Namespace) -> int:
    from edge_search.agent.security import ensure_token, token_file_too_open
    from edge_search.devices.profile import get_profile
    from edge_search.errors import InputError

    try:
        from edge_search.agent.server import AgentConfig, local_profile, serve
    except ModuleNotFoundError as err:
        from edge_search.errors import MissingDependency

        raise MissingDependency(err.name or "fastapi", "agent") from None
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: not a TCP port")
    if args.max_model_mb <= 0 or args.max_cache_mb < args.max_model_mb or args.max_measure_time <= 0:
        raise InputError("--max-model-mb, --max-measure-time must be positive and --max-cache-mb >= --max-model-mb")
    cores = None
    if args.cores:
        try:
            cores = tuple(int(c) for c in args.cores.split(","))
        except ValueError:
            raise InputError(f"--cores {args.cores}: expected comma-separated core numbers") from None
    profile = local_profile(get_profile(args.profile, args.profiles), cores)
    token, created = ensure_token(args.token_file)
    if created:
        print(f"edge-search agent: wrote a new token to {args.token_file}; copy it to the clients",
              file=sys.stderr)
    elif token_file_too_open(args.token_file):
        print(f"edge-search agent: warning: {args.token_file} is readable by other users (chmod 600 it)",
              file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.ssl_certfile:
        print("edge-search agent: warning: serving plain HTTP beyond this machine; use a trusted network, "
              "a tunnel, or --ssl-certfile/--ssl-keyfile", file=sys.stderr)
    config = AgentConfig(token=token, profile=profile, cache_dir=args.cache.expanduser(),
                         max_model_bytes=int(args.max_model_mb * 2**20),
                         max_cache_bytes=int(args.max_cache_mb * 2**20),
                         max_measure_time_s=args.max_measure_time, openapi=args.openapi)
    from edge_search.devices.local import LocalDevice

    LocalDevice(profile)  # fail now, as one line, on cores this machine lacks
    scheme = "https" if args.ssl_certfile else "http"
    print(f"edge-search agent: measuring as '{profile.name}' on {scheme}://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    serve(config, args.host, args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
          log_level=args.log_level)
    return 0


def _status(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    from edge_search.agent.security import read_token
    from edge_search.devices.agent import TOKEN_ENV, agent_verify, probe
    from edge_search.devices.profile import AgentAddress
    from edge_search.errors import InputError
    from edge_search.schema import validation_problem

    token = read_token(args.token_file) if args.token_file else os.environ.get(TOKEN_ENV)
    try:
        address = AgentAddress(url=args.url, ca_file=str(args.ca_file) if args.ca_file else None)
    except ValidationError as err:
        raise InputError(f"--ca-file: {validation_problem(err).message}") from None
    health = probe(args.url, token, args.timeout, verify=agent_verify(address))
    if args.json:
        print(json.dumps({"url": args.url, **health.model_dump(mode="json")}, indent=2))
        return 0
    b = health.board
    last = (datetime.fromtimestamp(health.last_measurement_at).isoformat(timespec="seconds")
            if health.last_measurement_at else "never")
    temps = ", ".join(f"{k} {v:.1f}°C" for k, v in b.temperatures_c.items()) or "not exposed"
    throttled = {True: "yes", False: "no", None: "unknown"}[b.throttled]
    rows = [
        ("agent", f"{args.url} (edge-search {health.version}, protocol {health.protocol})"),
        ("state", "busy" if health.busy else "idle"),
        ("queue length", str(health.queue_length)),
        ("last heartbeat", datetime.fromtimestamp(health.server_time).isoformat(timespec="seconds")),
        ("device profile", f"{health.device} (cores {','.join(map(str, health.cores))})"),
        ("measurements", f"{health.measurements} (last {last}); {health.cached_models} models cached"),
        ("uptime", f"{health.uptime_s:.0f} s"),
        ("temperature", temps),
        ("throttled", throttled + (f" ({b.throttle_source})" if b.throttle_source else "")),
        ("load", " ".join(f"{x:.2f}" for x in b.load_avg) + f" ({b.cpu_percent:.0f}% CPU)"),
        ("memory", f"{b.memory_available_mb:.0f} MB free of {b.memory_total_mb:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
