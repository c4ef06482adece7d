"""`torch`: a user's PyTorch model, built and trained by a function the space names.

    task:
      name: torch
      options: {builder: "my_pkg.model:build", metric: fidelity_top1}
    train:
      width: {choices: [0.5, 1.0]}       # whatever train params `build` accepts

`build(params: dict) -> (torch.nn.Module, {input_name: array, ..., ["labels": array]})` builds and
trains the model for the train params (torch is seeded with the space's seed first) and returns it
with its evaluation data: one array per model input (samples along axis 0), plus optional labels
(see `edge_search.tasks.data`). edge-search exports the module to ONNX (TorchScript exporter,
dynamic batch axis; height and width too with `dynamic_spatial: true`), stores the data next to
it, and from then on treats the trial like an `onnx` task: transforms, evaluation against the fp32
export (fidelity) or the labels, measurement.

The builder's module is imported with the current working directory on `sys.path` (appended).
The train knobs and their defaults come from the `train_knobs` option, else from a `TRAIN_KNOBS`
dict in the builder's module. The task's `version` hashes the options (builder name included) and
the builder's source file, so editing either invalidates cached models.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edge_search.config import DeployConfig
from edge_search.errors import InputError
from edge_search.schema import StrictModel
from edge_search.tasks.base import EpochCallback, ModelArtifact, Task
from edge_search.tasks.data import LABELS_KEY
from edge_search.tasks.onnx_model import Metric, OnnxModelTask, parse_options

EVAL_DATA = "eval.npz"
"""File name of the builder's evaluation data, stored next to `model.onnx` in the model cache."""


class TorchTaskOptions(StrictModel):
    """The `options:` of a `torch` task in a space."""

    builder: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`module:function`, importable from the working directory or the installed packages."""
    train_knobs: dict[str, Any] | None = None
    """Train params `build` accepts, with defaults (default: the module's `TRAIN_KNOBS`)."""
    metric: Metric | None = None
    opset: int = Field(17, ge=13)
    dynamic_spatial: bool = False
    """Export 4-D inputs with dynamic height and width, so `input_resolution` can be searched."""
    eval_size: int | None = Field(None, ge=1)


def import_builder(spec: str) -> Callable[..., Any]:
    """The function `module:function` names; `InputError` when it cannot be imported or called."""
    module_name, _, attr = spec.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # like `python -m`: a module next to the space is importable from the CLI
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"task torch: option 'builder': cannot import '{module_name}' ({err})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise InputError(f"task torch: option 'builder': module '{module_name}' has no '{attr}'")
    if not callable(fn):
        raise InputError(f"task torch: option 'builder': '{spec}' is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return, unused-ignore]


def _source_hash(fn: Callable[..., Any]) -> str:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    if not path:
        return "nosource"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def check_build_result(spec: str, value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Check the builder's return value (module, data); tensors become arrays; `InputError` otherwise."""
    import torch

    expected = "(torch.nn.Module, {input_name: array, ..., 'labels': array})"
    if not (isinstance(value, tuple) and len(value) == 2):
        raise InputError(f"task torch: {spec} returned {type(value).__name__}, expected {expected}")
    module, data = value
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"task torch: {spec} returned a {type(module).__name__} as the model, "
                         f"expected {expected}")
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise InputError(f"task torch: {spec} returned {type(data).__name__} as the data, "
                         f"expected {expected}")
    out: dict[str, np.ndarray] = {}
    for k, v in data.items():
        arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if arr.ndim == 0 or not len(arr):
            raise InputError(f"task torch: {spec}: data '{k}' has shape {list(arr.shape)}, "
                             "need samples on axis 0")
        out[k] = arr
    if not [k for k in out if k != LABELS_KEY]:
        raise InputError(f"task torch: {spec} returned no input arrays, expected {expected}")
    return module, out


def export_onnx(module: Any, inputs: Mapping[str, np.ndarray], path: Path, *, opset: int,
                dynamic_spatial: bool) -> None:
    """Export `module` in eval mode with the TorchScript exporter; inputs named like `inputs`."""
    import torch

    module.eval()
    names = list(inputs)
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[k][:1])) for k in names)
    axes: dict[str, dict[int, str]] = {}
    for k in names:
        axes[k] = {0: "batch"}
        if dynamic_spatial and inputs[k].ndim == 4:
            axes[k].update({2: "height", 3: "width"})
    with torch.no_grad():
        n_out = len(out) if isinstance(out := module(*args), tuple | list) else 1
    outputs = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    axes.update({o: {0: "batch"} for o in outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)


class TorchModelTask(Task):
    """A user's module built by `builder`; each trial is then scored like an `onnx` task."""

    name = "torch"
    can_train = False
    """Pruning runs on the exported graph (magnitude); the builder owns the training loop."""
    supports_input_resolution = True

    def __init__(self, **options: Any) -> None:
        """Validate options and import the builder now, so a bad space fails before any trial."""
        self.options: TorchTaskOptions = parse_options(self.name, options, TorchTaskOptions)
        self.builder = import_builder(self.options.builder)
        knobs = self.options.train_knobs
        if knobs is None:
            module = importlib.import_module(self.options.builder.partition(":")[0])
            knobs = getattr(module, "TRAIN_KNOBS", {})
        if not isinstance(knobs, Mapping):
            raise InputError("task torch: TRAIN_KNOBS in the builder's module must be a dict of defaults")
        self.train_knobs: Mapping[str, Any] = dict(knobs)
        self.primary_metric: str = self.options.metric or "fidelity_top1"
        spec_hash = hashlib.sha256(self.options.model_dump_json().encode()).hexdigest()[:8]
        self.version = f"1-{spec_hash}-{_source_hash(self.builder)}"  # builder + options + its source
        self._bound: dict[Path, OnnxModelTask] = {}

    def train(self, params: Mapping[str, Any], workdir: Path, seed: int,
              on_epoch: EpochCallback | None = None) -> ModelArtifact:
        """Call the builder with seeded torch, export `model.onnx` and store `eval.npz` beside it."""
        import torch

        p = self.resolve_params(params)
        workdir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        module, data = check_build_result(self.options.builder, self.builder(dict(p)))
        inputs = {k: v for k, v in data.items() if k != LABELS_KEY}
        onnx_path = workdir / "model.onnx"
        export_onnx(module, inputs, onnx_path, opset=self.options.opset,
                    dynamic_spatial=self.options.dynamic_spatial)
        np.savez(workdir / EVAL_DATA, **data)  # type: ignore[arg-type]
        return ModelArtifact(onnx_path=onnx_path)

    def bind_trial(self, artifact: ModelArtifact, params: Mapping[str, Any],
                   deploy: DeployConfig) -> OnnxModelTask:
        """An `onnx` task over this trial's fp32 export and the builder's data, bound to `deploy`."""
        model = artifact.onnx_path.resolve()
        if model not in self._bound:
            opts: dict[str, Any] = {"model": model, "data": model.parent / EVAL_DATA,
                                    "metric": self.options.metric, "eval_size": self.options.eval_size}
            self._bound[model] = OnnxModelTask(**opts)
        return self._bound[model].bind_trial(artifact, params, deploy)

    def _unbound(self) -> InputError:
        return InputError("task torch: evaluate/calibrate/measure need a trained model; the pipeline "
                          "calls bind_trial() first")

    def evaluate(self, onnx_path: Path, batch_size: int = 1) -> dict[str, float]:
        """Only on the task `bind_trial` returns."""
        raise self._unbound()

    def calibration_batches(self, n: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Only on the task `bind_trial` returns."""
        raise self._unbound()

    def input_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """Only on the task `bind_trial` returns."""
        raise self._unbound()
