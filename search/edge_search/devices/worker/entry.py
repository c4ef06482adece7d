"""The worker process's entry point: read a `WorkerRequest`, measure or profile, write one JSON line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import edge_search.devices.worker as worker_package
from edge_search.devices.worker.engine import run_request
from edge_search.devices.worker.request import WorkerFailure, WorkerRequest, one_line
from edge_search.expiring_lease import watch_guard_from_env


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, 2 (the request or model is at fault) or 1 (anything else)."""
    parser = argparse.ArgumentParser(prog="python -m edge_search.devices.worker", description=worker_package.__doc__)
    parser.add_argument("--request", type=Path, help="read the request from this file (default: stdin)")
    parser.add_argument("--out", type=Path, help="write the result line to this file (default: stdout)")
    args = parser.parse_args(argv)
    watch_guard_from_env()  # started under a device lease: stop at once when it goes

    # Keep fd 1 for the result only: anything else written to stdout lands on stderr.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = 0
    try:
        text = args.request.read_text() if args.request else sys.stdin.read()
        try:
            wr = WorkerRequest.model_validate_json(text)
        except ValueError as err:
            raise WorkerFailure("input", f"bad worker request: {one_line(str(err), 300)}") from None
        line = run_request(wr)
    except WorkerFailure as err:
        line = json.dumps({"error": {"kind": err.kind, "message": str(err)}})
        code = 2 if err.kind == "input" else 1
    except Exception as err:
        message = f"{type(err).__name__}: {one_line(str(err))}"
        line = json.dumps({"error": {"kind": "runtime", "message": message}})
        code = 1
    if args.out:
        args.out.write_text(line + "\n")
    else:
        with contextlib.suppress(BrokenPipeError), os.fdopen(result_fd, "w") as out:
            out.write(line + "\n")
    return code
