"""The command table: each command parses its arguments, calls one function and returns an exit code.

Commands live in `edge_search.commands.<name>` and are imported only when invoked, so
`edge-search --help` stays fast and a missing optional back-end only affects its own command.
Errors raised as `EdgeSearchError` become one line on stderr and the error's exit code (2 for bad
input); argparse usage errors also exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from edge_search.errors import EdgeSearchError

#: command name -> (module under edge_search.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "search training + deployment knobs and log the Pareto front"),
    "pareto": ("pareto", "print a study's feasible Pareto set"),
    "confirm": ("confirm", "re-measure a study's front interleaved in fresh workers and recompute it"),
    "devices": ("devices", "list device profiles (built-in and --profiles)"),
    "calibrate": ("calibrate", "fit a device profile's calibration (host: measure the reference suite)"),
    "predict": ("predict", "predict a model's latency on a device profile, with its interval"),
    "measure": ("measure", "measure one ONNX model's latency on a device"),
    "report": ("report", "write a study's dashboards and front as one self-contained HTML file"),
    "export": ("export", "write a deployable bundle for a trial (or the whole front with --pareto)"),
    "promote": ("promote", "register a trial's bundle in the MLflow model registry, with an alias"),
    "check": ("check", "check models against latency/size/accuracy budgets (CI; exit 1 when exceeded)"),
    "sensitivity": ("sensitivity", "rank a model's nodes by int8 sensitivity (which to keep in fp32)"),
    "agent": ("agent", "run the board agent (serve) or show an agent's state (status)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-search", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    from edge_search import __version__

    parser.add_argument("--version", action="version", version=f"edge-search {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        _load(module).configure(p)
    return parser


def _load(module: str) -> ModuleType:
    return importlib.import_module(f"edge_search.commands.{module}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("optuna", "mlflow", "alembic", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        code: int = _load(args._module).run(args)
    except EdgeSearchError as err:
        print(f"edge-search {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edge-search {args.command}: interrupted; finished trials are kept", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
