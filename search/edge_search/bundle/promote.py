"""`promote`: a trial's bundle registered in the MLflow model registry, with an alias and tags."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import optuna

from edge_search.bundle.export import export_trial, get_trial
from edge_search.bundle.runtime import BUNDLE_FILE
from edge_search.errors import InputError
from edge_search.records import StudyRecord, TrialRecord
from edge_search.tracking import Tracker


def promote_trial(study: optuna.Study, number: int, tracker: Tracker, *, name: str, alias: str = "champion",
                  budget: str | None = None, base_dir: Path = Path()) -> str:
    """Log the trial's bundle to its MLflow run under `bundle/`, register it as a new version of
    model `name`, point `alias` at it and tag it (device, budget, study, trial, latency, accuracy).
    Returns the version number."""
    trial = get_trial(study, number)
    run_id = TrialRecord.of(trial).run_id
    if not run_id:
        raise InputError(f"trial {number} of study '{study.study_name}' has no MLflow run to register from")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_trial(study, number, Path(tmp) / "bundle", tracker, base_dir)
        manifest = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
        tracker.log_folder(run_id, folder, "bundle")
    srecord = StudyRecord.of(study)
    space = srecord.space
    from edge_search.space import Constraint

    constraints = "; ".join(str(Constraint.model_validate(c)) for c in space.get("constraints") or [])
    lat = manifest["latency"]
    tags = {"device": str(lat["device"] or srecord.device),
            "budget": budget if budget is not None else constraints,
            "study": study.study_name, "trial": str(number), "latency_ms": str(lat["median_ms"]),
            "latency_source": str(lat["source"]), "accuracy": str(manifest["accuracy"]),
            "space_hash": str(srecord.get(StudyRecord.SPACE_HASH, ""))}
    version = tracker.register_version(name, run_id, "bundle", tags=tags,
                                       description=f"trial {number} of study {study.study_name}", alias=alias,
                                       model_tags={"edge_search.study": study.study_name},
                                       model_description="Registered by edge-search promote")
    tracker.set_tags(run_id, {"registered_model": f"{name}/{version}"})
    return version
