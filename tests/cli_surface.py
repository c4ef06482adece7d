"""The CLI's public surface: every command's `--help` text and the shape of every JSON output.

Recorded into `tests/data/cli_surface/` (``python -m tests.cli_surface``) and compared by
`tests/test_cli_surface.py`, so a refactoring that changes what users see fails a test. A change
meant to alter the surface re-records the files in the same commit (and says so in CHANGELOG.md).
JSON outputs are compared by shape (keys and value types, recursively), not by value: latencies
differ from run to run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "cli_surface"
COLUMNS = "100"


def _cli(argv: list[str]) -> tuple[int, str]:
    from edge_search.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help exits 0 through argparse
            code = int(exc.code or 0)
    return code, out.getvalue()


def help_texts() -> dict[str, str]:
    """`edge-search --help`, every command's and every sub-command's `--help`."""
    from edge_search.cli import COMMANDS

    os.environ["COLUMNS"] = COLUMNS
    texts = {"edge-search": _cli(["--help"])[1]}
    for name in COMMANDS:
        texts[name] = _cli([name, "--help"])[1]
    for sub in ("serve", "status"):
        texts[f"agent {sub}"] = _cli(["agent", sub, "--help"])[1]
    return texts


def shape(value: Any) -> Any:
    """Keys and value types, recursively; lists by the union of their items' shapes (``"list"`` for a
    list of scalars or an empty one)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            # a list of scalars, or an empty one: its content varies from run to run (warnings on a
            # loaded machine), its type does not
            return "list"
        shapes = {json.dumps(shape(v), sort_keys=True) for v in value}
        return [json.loads(s) for s in sorted(shapes)]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def json_outputs(workdir: Path) -> dict[str, Any]:
    """The JSON each command writes, on a tiny model and a tiny study made in `workdir`."""
    from tests.devices.tiny_conv import tiny_conv

    os.chdir(workdir)
    os.environ["EDGE_SEARCH_LOCK_DIR"] = str(workdir / "locks")
    model = tiny_conv(workdir / "tiny.onnx")
    out: dict[str, Any] = {}
    code, text = _cli(["devices", "--json", "--no-probe"])
    out["devices"] = json.loads(text)
    code, text = _cli(["measure", str(model), "--json", "--max-time", "0.3", "--precision-target", "0.2"])
    out["measure"] = json.loads(text)
    code, text = _cli(["predict", str(model), "--device", "raspberry-pi-4", "--json"])
    out["predict"] = json.loads(text)
    space = workdir / "space.yaml"
    space.write_text(
        "schema_version: 1\nname: surface\ntask: digits-cnn\n"
        "train: {epochs: 2, width: 0.5, depth: 1}\n"
        "deploy: {precision: {choices: [fp32, int8-dynamic]}}\n"
        "objectives: [{accuracy: maximize}, {latency_ms: minimize}]\n")
    code, _ = _cli(["run", "--space", str(space), "--trials", "2", "--sampler", "random",
                    "--max-measure-time", "0.3", "--precision-target", "0.2"])
    assert code == 0, "the surface study did not run"
    code, text = _cli(["pareto", "--study", "surface-host", "--json"])
    out["pareto"] = json.loads(text)
    budgets = workdir / "budgets.yaml"
    budgets.write_text(f"schema_version: 1\ndevice: host\nmeasurement: {{min_rounds: 2, max_rounds: 2}}\n"
                       f"models:\n  - name: tiny\n    model: {model}\n    budgets: {{latency_ms: 1000}}\n")
    _cli(["check", str(budgets), "--json", str(workdir / "check.json"), "-q"])
    out["check"] = json.loads((workdir / "check.json").read_text())
    return {name: shape(value) for name, value in out.items()}


def record(workdir: Path) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, text in help_texts().items():
        (DATA / f"help-{name.replace(' ', '-')}.txt").write_text(text)
    for name, value in json_outputs(workdir).items():
        (DATA / f"json-{name}.json").write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import tempfile

    record(Path(tempfile.mkdtemp(prefix="cli-surface-")))
