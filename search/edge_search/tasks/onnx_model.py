"""`onnx`: bring your own ONNX model and data; only deployment knobs are searched.

A space points at a model and data (see `edge_search.tasks.data`):

    task: {name: onnx, options: {model: model.onnx, data: inputs.npz, metric: fidelity_top1}}

There is no training: `train` copies the model into the cache (the task's `version` carries the
model's and the data's content hashes, so a changed file is a new cache key). Unstructured pruning
then runs on the ONNX graph (`MagnitudePruneTransform`), quantisation and fp16 as for any task.

Quality is measured with ONNX Runtime on the data: with labels, `top1`/`top5` (class indices) or
`mae` (targets shaped like the output); always, fidelity to the fp32 model on the same inputs:
`fidelity_top1` (argmax agreement over the last axis), `fidelity_cosine` (mean per-sample cosine
similarity) and `fidelity_max_abs_err`. `evaluate` returns every metric the data allows, plus the
aliases `accuracy` (= top1) and `fidelity` (= fidelity_top1); `metric` names the primary one.

Calibration for int8-static takes `calibration_size` samples from the end of the data (evaluation
uses the first `eval_size`), or from `calibration_data` when given. Relative paths are resolved
against the current working directory.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field, ValidationError

from edge_search.config import DeployConfig
from edge_search.devices.inputs import ORT_DTYPES, InputSpec, specs_from_onnx
from edge_search.errors import InputError, InvalidConfig
from edge_search.schema import StrictModel, validation_problem
from edge_search.tasks.base import EpochCallback, ModelArtifact, Task
from edge_search.tasks.data import EvalData, Preprocess, file_digest, load_data

log = logging.getLogger(__name__)

EVAL_THREADS = 1
"""ONNX Runtime threads while scoring: deterministic, and leaves the other cores alone."""
LABEL_METRICS = ("top1", "top5", "mae")
FIDELITY_METRICS = ("fidelity_top1", "fidelity_cosine", "fidelity_max_abs_err")
Metric = Literal["top1", "top5", "mae", "fidelity_top1", "fidelity_cosine", "fidelity_max_abs_err"]


class OnnxTaskOptions(StrictModel):
    """The `options:` of an `onnx` task in a space."""

    model: Path
    """The fp32 ONNX model (weights inline, not external data)."""
    data: Path
    """`.npz` of inputs (+ optional `labels`) or a folder of images."""
    metric: Metric | None = None
    """Primary quality metric; default `top1` with class labels, `mae` with targets, else fidelity_top1."""
    calibration_data: Path | None = None
    """Separate calibration data (same format); default: the end of `data`."""
    eval_size: int | None = Field(None, ge=1)
    """Samples scored (the first ones); default all of them."""
    output: str | None = None
    """Model output that is scored; default the first."""
    preprocess: Preprocess = Field(default_factory=Preprocess)
    """For an image folder: resize, crop, normalisation, layout."""


def parse_options(task: str, options: Mapping[str, Any], cls: type[BaseModel]) -> Any:
    """Validate a task's options; an error names the task and the option in one line."""
    try:
        return cls.model_validate(dict(options))
    except ValidationError as err:
        problem = validation_problem(err)
        raise InputError(f"task {task}: option '{problem.where or '(options)'}': {problem.message}") from None


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = EVAL_THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for bad models
        raise InputError(f"{path}: ONNX Runtime cannot load the model ({' '.join(str(err).split())[:200]})"
                         ) from None


def run_model(sess: ort.InferenceSession, data: EvalData, start: int, stop: int, batch_size: int,
              output: str, dtypes: Mapping[str, type[np.generic]]) -> np.ndarray:
    """Output `output` for samples `start:stop`, run in chunks of `batch_size` (padded when the
    model's batch dimension is fixed)."""
    fixed = sess.get_inputs()[0].shape[0]
    chunk = fixed if isinstance(fixed, int) and fixed > 0 else max(1, batch_size)
    outs: list[np.ndarray] = []
    for lo in range(start, stop, chunk):
        hi = min(lo + chunk, stop)
        feed = {k: v.astype(dtypes[k], copy=False) for k, v in data.take(lo, hi).items()}
        if hi - lo < chunk and isinstance(fixed, int):
            feed = {k: np.concatenate([v, np.zeros((chunk - (hi - lo), *v.shape[1:]), v.dtype)])
                    for k, v in feed.items()}
        out = sess.run([output], feed)[0]
        outs.append(np.asarray(out, dtype=np.float32)[:hi - lo])
    return np.concatenate(outs)


def fidelity(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Agreement of `out` with the fp32 reference `ref` (same shape, samples along axis 0)."""
    a, b = out.reshape(len(out), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    return {"fidelity_top1": float((out.argmax(-1) == ref.argmax(-1)).mean()),
            "fidelity_cosine": float(cos.mean()),
            "fidelity_max_abs_err": float(np.abs(a - b).max())}


def label_metrics(out: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1/top5 for class-index labels of shape (N,), mae for targets shaped like `out`."""
    if labels.shape == out.shape and labels.dtype.kind == "f":
        return {"mae": float(np.abs(out.astype(np.float64) - labels).mean())}
    k = min(5, out.shape[-1])
    top = np.argsort(-out, axis=-1)[:, :k]
    top1 = float((top[:, 0] == labels).mean())
    return {"top1": top1, "accuracy": top1, "top5": float((top == labels[:, None]).any(axis=1).mean())}


class OnnxModelTask(Task):
    """A user's ONNX model and data; see the module docstring for options, metrics and caching."""

    name = "onnx"
    train_knobs: Mapping[str, Any] = {}
    can_train = False
    supports_input_resolution = True
    """The `input_resolution` deploy knob resizes 4-D float inputs (dynamic spatial axes needed)."""

    def __init__(self, **options: Any) -> None:
        """Validate options, model and data now, so a bad space fails before any trial runs."""
        self.options: OnnxTaskOptions = parse_options(self.name, options, OnnxTaskOptions)
        o = self.options
        self.model_path = o.model.resolve()
        if not self.model_path.is_file():
            raise InputError(f"task onnx: option 'model': {o.model}: no such file")
        self.specs: list[InputSpec] = specs_from_onnx(self.model_path)
        self.dtypes = {s.name: ORT_DTYPES.get(s.type, np.float32) for s in self.specs}
        self._resolution: int | None = None
        self._refs: dict[int | None, np.ndarray] = {}  # fp32 outputs per resolution; shared by bound copies
        data = self._load(o.data, None)
        self._check_inputs(data, "data")
        if o.calibration_data is not None:
            self._check_inputs(self._load(o.calibration_data, None), "calibration_data")
        sess = _session(self.model_path)
        outputs = [x.name for x in sess.get_outputs()]
        if o.output is not None and o.output not in outputs:
            raise InputError(f"task onnx: option 'output': the model has no output '{o.output}' "
                             f"(outputs: {', '.join(outputs)})")
        self.output = o.output or outputs[0]
        sample = run_model(sess, data, 0, 1, 1, self.output, self.dtypes)
        self.primary_metric: str = self._check_labels(data, sample.shape)
        self.version = f"1-{file_digest(self.model_path)[:12]}-{file_digest(o.data)[:12]}"
        if o.calibration_data is not None:
            self.version += f"-{file_digest(o.calibration_data)[:12]}"

    # -- validation -----------------------------------------------------------------------------

    def _load(self, path: Path, resolution: int | None) -> EvalData:
        names = [s.name for s in self.specs]
        return load_data(path, image_input=names[0] if len(names) == 1 else None,
                         preprocess=self.options.preprocess, resolution=resolution,
                         layout=self.options.preprocess.layout)

    def _check_inputs(self, data: EvalData, option: str) -> None:
        model_names, data_names = sorted(s.name for s in self.specs), sorted(data.inputs)
        if model_names != data_names:
            raise InputError(f"task onnx: {data.source}: inputs {data_names} do not match the model's "
                             f"inputs {model_names} (option '{option}')")
        for spec in self.specs:
            arr = data.inputs[spec.name]
            if arr.ndim != len(spec.dims):
                raise InputError(f"task onnx: {data.source}: input '{spec.name}' has rank {arr.ndim} "
                                 f"{list(arr.shape)}, the model declares rank {len(spec.dims)}")
            if spec.name not in self.dtypes or spec.type not in ORT_DTYPES:
                raise InputError(f"task onnx: model input '{spec.name}' has unsupported type {spec.type}")

    def _check_labels(self, data: EvalData, out_shape: tuple[int, ...]) -> str:
        labels, metric = data.labels, self.options.metric
        kind = None
        if labels is not None:
            if labels.ndim == 1 and labels.dtype.kind in "iu":
                if len(out_shape) != 2:
                    raise InputError(f"task onnx: {data.source}: class labels of shape {list(labels.shape)} "
                                     f"need a (batch, classes) output; '{self.output}' is {list(out_shape)}")
                if labels.min() < 0 or labels.max() >= out_shape[-1]:
                    raise InputError(f"task onnx: {data.source}: labels lie in "
                                     f"[{labels.min()}, {labels.max()}], the model has "
                                     f"{out_shape[-1]} classes")
                kind = "class"
            elif labels.shape[1:] == out_shape[1:] and labels.dtype.kind == "f":
                kind = "target"
            else:
                raise InputError(f"task onnx: {data.source}: labels have shape {list(labels.shape)} "
                                 f"({labels.dtype}); expected class indices ({labels.shape[0]},) or float "
                                 f"targets shaped like output '{self.output}' "
                                 f"{[labels.shape[0], *out_shape[1:]]}")
        if metric is None:
            return {"class": "top1", "target": "mae", None: "fidelity_top1"}[kind]
        if metric in LABEL_METRICS:
            need = "target" if metric == "mae" else "class"
            if kind != need:
                what = "float targets shaped like the output" if need == "target" else "class-index labels"
                raise InputError(f"task onnx: option 'metric': {metric} needs {what} ('labels' in the data)")
        return metric

    # -- per trial ------------------------------------------------------------------------------

    def bind_trial(self, artifact: ModelArtifact, params: Mapping[str, Any],
                   deploy: DeployConfig) -> OnnxModelTask:
        """This task for one trial's deploy knobs (the pipeline calls it once the model is trained).

        Raises `InvalidConfig` when the model cannot take `input_resolution` or `batch_size`.
        """
        for spec in self.specs:
            fixed = spec.dims[0] if spec.dims and isinstance(spec.dims[0], int) and spec.dims[0] > 0 else None
            if fixed is not None and fixed != deploy.batch_size:
                raise InvalidConfig(f"model input '{spec.name}' has a fixed batch size {fixed}; "
                                    f"batch_size={deploy.batch_size} cannot be deployed")
        r = deploy.input_resolution
        if r is None:
            return self
        images = [s for s in self.specs if len(s.dims) == 4]
        if not images:
            raise InvalidConfig("input_resolution needs a 4-D image input; the model has none")
        hw = (2, 3) if self.options.preprocess.layout == "nchw" else (1, 2)
        for spec in images:
            static = [d for d in (spec.dims[i] for i in hw) if isinstance(d, int) and d > 0]
            if static and static != [r, r]:
                raise InvalidConfig(f"model input '{spec.name}' has a fixed size {static}; "
                                    f"input_resolution={r} needs a model exported with dynamic "
                                    "height and width")
        bound = copy.copy(self)
        bound._resolution = r
        return bound

    def _eval_data(self) -> EvalData:
        return self._load(self.options.data, self._resolution)

    def _eval_range(self, data: EvalData) -> tuple[int, int]:
        return 0, min(data.n, self.options.eval_size or data.n)

    def reference_outputs(self) -> np.ndarray:
        """The fp32 model's outputs on the evaluation samples (computed once per resolution)."""
        if self._resolution not in self._refs:
            data = self._eval_data()
            self._refs[self._resolution] = run_model(_session(self.model_path), data, *self._eval_range(data),
                                                     32, self.output, self.dtypes)
        return self._refs[self._resolution]

    # -- the Task API ---------------------------------------------------------------------------

    def train(self, params: Mapping[str, Any], workdir: Path, seed: int,
              on_epoch: EpochCallback | None = None) -> ModelArtifact:
        """No training: copy the model into `workdir/model.onnx`."""
        workdir.mkdir(parents=True, exist_ok=True)
        dst = workdir / "model.onnx"
        shutil.copyfile(self.model_path, dst)
        return ModelArtifact(onnx_path=dst)

    def evaluate(self, onnx_path: Path, batch_size: int = 1) -> dict[str, float]:
        """Label metrics (where the data has labels) and fidelity to the fp32 model, with ONNX Runtime."""
        data = self._eval_data()
        start, stop = self._eval_range(data)
        sess = _session(onnx_path)
        out = run_model(sess, data, start, stop, batch_size, self.output, self.dtypes)
        metrics = fidelity(out, self.reference_outputs())
        metrics["fidelity"] = metrics["fidelity_top1"]
        if data.labels is not None:
            metrics.update(label_metrics(out, data.labels[start:stop]))
        return metrics

    def calibration_batches(self, n: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Up to `n` samples: the last ones of `data`, or the first of `calibration_data`."""
        if self.options.calibration_data is not None:
            data = self._load(self.options.calibration_data, self._resolution)
            start = 0
        else:
            data = self._eval_data()
            start = max(0, data.n - n)
        stop = min(data.n, start + n)
        if stop - start < n:
            log.info("calibration: %d samples asked, %d available in %s", n, stop - start, data.source)
        step = max(1, batch_size)
        for lo in range(start, stop, step):
            feed = data.take(lo, min(lo + step, stop))
            yield {k: v.astype(self.dtypes[k], copy=False) for k, v in feed.items()}

    def input_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """Each input's data shape with the batch axis set to `batch_size` (at the bound resolution)."""
        data = self._eval_data()
        return {k: (batch_size, *v.shape[1:]) for k, v in data.inputs.items()}
