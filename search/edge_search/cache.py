"""Content-addressed artifact cache: trained models, deployable models and measurements.

Keys are hashes of everything that determines the content (task version, params, seed, knobs,
model bytes, device profile version), so a hit is always safe to reuse. Entries are written into
a temporary folder and renamed into place, so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def content_key(*parts: Any) -> str:
    """Stable sha256 of JSON-serialisable parts (dict keys sorted)."""
    canon = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactCache:
    """A folder of `<kind>/<key>/` entries; `entry()` builds one on a miss and reports hits."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def entry(self, kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return (folder, hit). On a miss, `build(tmpdir)` fills a temp folder that is then renamed."""
        final = self.path(kind, key)
        if (final / ".complete").exists():
            return final, True
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=final.parent))
        try:
            build(tmp)
            (tmp / ".complete").touch()
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished the same entry first (rename onto a non-empty dir fails):
                # its content is equivalent by construction, so keep it and drop ours.
                if not (final / ".complete").exists():
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final, False

    def read_json(self, kind: str, key: str) -> Any | None:
        p = self.path(kind, key) / "value.json"
        if not (self.path(kind, key) / ".complete").exists():
            return None
        return json.loads(p.read_text())

    # -- failures of deterministic stages ---------------------------------------------------------

    def _failure_path(self, kind: str, key: str) -> Path:
        return self.root / "failures" / kind / f"{key}.json"

    def failure(self, kind: str, key: str) -> dict[str, Any] | None:
        """The recorded failure of building entry (`kind`, `key`), or None.

        A stage that failed deterministically (the same inputs fail the same way: a quantiser that
        cannot calibrate, a task that cannot train these params) is recorded here so that no later
        trial, in this study or another one sharing the cache, builds it again."""
        try:
            value = json.loads(self._failure_path(kind, key).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def record_failure(self, kind: str, key: str, info: dict[str, Any]) -> None:
        """Record that building (`kind`, `key`) failed (written atomically; the last writer wins)."""
        path = self._failure_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)

    def write_json(self, kind: str, key: str, value: Any) -> None:
        def build(tmp: Path) -> None:
            (tmp / "value.json").write_text(json.dumps(value))

        self.entry(kind, key, build)
