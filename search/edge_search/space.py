"""`SearchSpace`: the typed, validated description of a search, loaded from YAML.

A space names a task, the train knobs and deploy knobs to search (each a range, a set of choices or
a fixed value), the objectives with their directions, and constraints such as `accuracy >= 0.9`.
It turns into Optuna suggestions (define-by-run, so Ray Tune's `OptunaSearch` can use it too).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from edge_search.errors import InputError
from edge_search.metrics import OBJECTIVES, Direction, value_range
from edge_search.metrics import direction as metric_direction
from edge_search.schema import StrictModel, format_validation_error

if TYPE_CHECKING:
    from edge_search.devices.capabilities import DeviceCapabilities

SPACE_SCHEMA_VERSION = 1

Scalar = bool | int | float | str


class KnobSpec(StrictModel):
    """One searched (or fixed) knob.

    Written in YAML as `{low, high[, log, step]}`, `{choices: [...]}`, `{value: x}` or a bare value;
    `when: {other_knob: value-or-list}` samples it only when another knob has that value;
    `available_only: true` (deploy `execution_provider` and `precision` choices) keeps only the
    choices the device can run, decided when the study starts (`resolve_space`), so one space
    serves a CPU-only host and a Jetson.
    """

    type: Literal["float", "int", "categorical", "fixed"]
    low: float | int | None = None
    high: float | int | Literal["cores"] | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Scalar, ...] | None = None
    value: Scalar | None = None
    when: dict[str, Scalar | tuple[Scalar, ...]] | None = None
    available_only: bool = False
    choices_by: dict[str, dict[str, tuple[Scalar, ...]]] | None = None
    """The choices per value of one other knob of the section (``{execution_provider: {tensorrt:
    [fp32, fp16], cpu: [...]}}``), where they differ from `choices`. `resolve_space` sets it for an
    `available_only` precision, so the sampler is never offered a pair the device refuses (int8 with
    TensorRT on a Maxwell GPU, fp16 on cores without fp16 arithmetic); each set is sampled under its own
    Optuna parameter name (`param_key`), since Optuna fixes one distribution per name."""

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return {"type": "fixed", "value": data}
        data = dict(data)
        if "type" not in data:
            if "choices" in data:
                data["type"] = "categorical"
            elif "value" in data:
                data["type"] = "fixed"
            elif "low" in data or "high" in data:
                ints = all(isinstance(data.get(k), int) or data.get(k) == "cores" for k in ("low", "high"))
                data["type"] = "int" if ints and not isinstance(data.get("step"), float) else "float"
        return data

    @model_validator(mode="after")
    def _check(self) -> KnobSpec:
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} range needs both low and high")
            if self.high != "cores" and self.low > self.high:
                raise ValueError(f"low ({self.low}) is above high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
        elif self.type == "categorical":
            if not self.choices:
                raise ValueError("choices must list at least one value")
        elif self.type == "fixed" and self.value is None:
            raise ValueError("a fixed knob needs a value")
        if self.available_only and self.type != "categorical":
            raise ValueError("available_only needs a list of choices")
        return self

    def narrowed(self, sampled: Mapping[str, Any], name: str = "", cores: int | None = None) -> KnobSpec:
        """This knob as it can be sampled after the knobs in `sampled`: the choices `choices_by` gives,
        and for a knob in `CORES_LEFT_BY` (named `name`) a `high: cores` cut to the cores the other
        knob leaves; itself otherwise."""
        spec = self
        if self.choices_by:
            ((other, table),) = self.choices_by.items()
            choices = table.get(str(sampled.get(other)))
            if choices is not None:
                spec = spec.model_copy(update={"choices": tuple(choices), "choices_by": None})
        left = self._cores_left(sampled, name, cores)
        if left is not None:
            spec = spec.model_copy(update={"high": left})
        return spec

    def _cores_left(self, sampled: Mapping[str, Any], name: str, cores: int | None) -> int | None:
        other = CORES_LEFT_BY.get(name)
        if other is None or self.high != "cores" or cores is None or other not in sampled:
            return None
        left = max(int(self.low or 1), cores // max(1, int(sampled[other])))
        return None if left == cores else left

    def param_key(self, prefix: str, name: str, sampled: Mapping[str, Any], cores: int | None = None) -> str:
        """The Optuna parameter name of this knob given the knobs sampled so far: ``deploy.precision``,
        or ``deploy.precision@tensorrt`` where `choices_by` narrows the choices for that value (and
        ``deploy.inter_op_threads@2`` where 2 intra-op threads leave fewer cores): Optuna fixes one
        distribution per name."""
        key, narrowed = f"{prefix}.{name}", self.narrowed(sampled, name, cores)
        if self.choices_by and narrowed.choices != self.choices:
            key += f"@{sampled.get(next(iter(self.choices_by)))}"
        if narrowed.high != self.high:
            key += f"@{sampled[CORES_LEFT_BY[name]]}"
        return key

    def condition_holds(self, sampled: Mapping[str, Any]) -> bool:
        if not self.when:
            return True
        for key, expected in self.when.items():
            allowed = expected if isinstance(expected, tuple) else (expected,)
            if sampled.get(key) not in allowed:
                return False
        return True


class ObjectiveSpec(StrictModel):
    name: str
    direction: Direction

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `- accuracy` or `- {accuracy: maximize}`
        if isinstance(data, str):
            return {"name": data, "direction": metric_direction(data)}
        if isinstance(data, Mapping) and len(data) == 1 and "name" not in data:
            ((name, direction),) = data.items()
            return {"name": name, "direction": direction}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVES:
            raise ValueError(f"unknown objective '{v}' (known: {', '.join(OBJECTIVES)})")
        return v


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_CONSTRAINT_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


class Constraint(StrictModel):
    """`metric op bound`, e.g. `latency_p90_ms <= 5`. Satisfied when `violation() <= 0`."""

    metric: str
    op: Literal["<=", ">=", "<", ">"]
    bound: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, str):
            m = _CONSTRAINT_RE.match(data)
            if not m:
                raise ValueError(f"'{data}' is not of the form 'metric <= number'")
            return {"metric": m.group(1), "op": m.group(2), "bound": float(m.group(3))}
        return data

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVES:
            raise ValueError(f"unknown metric '{v}' in constraint (known: {', '.join(OBJECTIVES)})")
        return v

    @model_validator(mode="after")
    def _reachable(self) -> Constraint:
        lo, hi = value_range(self.metric)
        if (self.op in (">=", ">") and (self.bound > hi or (self.op == ">" and self.bound == hi))) or (
                self.op in ("<=", "<") and (self.bound < lo or (self.op == "<" and self.bound == lo))):
            raise ValueError(f"constraint '{self}' can never be met: {self.metric} lies in [{lo:g}, {hi:g}]")
        return self

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 when satisfied, the size of the violation otherwise."""
        if self.op in ("<=", "<"):
            return value - self.bound
        return self.bound - value

    def satisfied(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


class TaskSpec(StrictModel):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class SearchSpace(StrictModel):
    """A validated search space; see `spaces/digits-cnn.yaml` for an annotated example."""

    schema_version: int
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    task: TaskSpec
    seed: int = 0
    train: dict[str, KnobSpec] = Field(default_factory=dict)
    deploy: dict[str, KnobSpec] = Field(default_factory=dict)
    objectives: tuple[ObjectiveSpec, ...] = Field(min_length=1)
    constraints: tuple[Constraint, ...] = ()

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SPACE_SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not supported (this edge-search reads {SPACE_SCHEMA_VERSION})")
        return v

    @field_validator("deploy")
    @classmethod
    def _known_deploy_knobs(cls, v: dict[str, KnobSpec]) -> dict[str, KnobSpec]:
        from edge_search.config import DEPLOY_KNOBS

        for name in v:
            if name not in DEPLOY_KNOBS:
                raise ValueError(f"unknown deploy knob '{name}' (known: {', '.join(DEPLOY_KNOBS)})")
        return v

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("an objective is listed twice")
        for group in (self.train, self.deploy):
            for name, spec in group.items():
                for other in (*(spec.when or {}), *(spec.choices_by or {})):
                    if other not in group:
                        raise ValueError(f"knob '{name}' depends on '{other}', which is not in the same section")
                if spec.choices_by is not None and len(spec.choices_by) != 1:
                    raise ValueError(f"knob '{name}': choices_by names exactly one other knob")
                if spec.available_only and (group is self.train or name not in AVAILABLE_ONLY_KNOBS):
                    raise ValueError(f"knob '{name}': available_only applies to the deploy knobs "
                                     f"{', '.join(AVAILABLE_ONLY_KNOBS)}")
        return self

    @property
    def directions(self) -> list[Direction]:
        return [o.direction for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def space_hash(self) -> str:
        """Short content hash: two spaces with the same hash search the same thing."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]


CORES_LEFT_BY = {"inter_op_threads": "intra_op_threads"}
"""Knobs whose ``high: cores`` means the cores another knob leaves: inter-op threads each run an
intra-op pool, so ``cores // intra_op_threads`` of them fit (the product oversubscribing the device is
refused by `check_deploy`; before this, 4 of 34 proposals of a digits search were such pairs)."""

AVAILABLE_ONLY_KNOBS = ("execution_provider", "precision")
"""Deploy knobs whose choices `available_only` filters by what the device can run."""


def resolve_space(space: SearchSpace, capabilities: DeviceCapabilities) -> tuple[SearchSpace, list[str]]:
    """The space for one device: `available_only` choices cut to what it can run (offered execution
    providers; precisions some offered path runs), and one line per dropped choice with the reason.

    Called once when a study starts, so Optuna sees one fixed set of choices per study. Raises
    `InputError` when no choice of such a knob is left.
    """
    from edge_search.config import DEVICE_PRECISION

    notes: list[str] = []
    deploy = dict(space.deploy)
    for name, spec in space.deploy.items():
        if not spec.available_only:
            continue
        assert spec.choices is not None
        keep: list[Scalar] = []
        for choice in spec.choices:
            if name == "execution_provider":
                why = None if choice in capabilities.paths else capabilities.refused.get(
                    str(choice), "not a known execution provider")
            else:
                needed = DEVICE_PRECISION.get(str(choice))
                why = None if needed in capabilities.precisions else (
                    f"no offered execution provider of device '{capabilities.device}' runs {needed}")
            if why is None:
                keep.append(choice)
            else:
                notes.append(f"deploy.{name}: {choice} left out: {why}")
        if not keep:
            raise InputError(f"deploy.{name}: none of {', '.join(map(str, spec.choices))} can run on device "
                             f"'{capabilities.device}' ({'; '.join(notes)})")
        deploy[name] = spec.model_copy(update={"choices": tuple(keep), "available_only": False})
    _split_precision_by_provider(space, deploy, capabilities, notes)
    return space.model_copy(update={"deploy": deploy}), notes


def _split_precision_by_provider(space: SearchSpace, deploy: dict[str, KnobSpec], capabilities: DeviceCapabilities,
                                 notes: list[str]) -> None:
    """Narrow an `available_only` precision to what each offered execution provider runs
    (`KnobSpec.choices_by`), in place; a provider left with no precision of the space is dropped.

    Only where the provider is sampled before the precision (the order `when` needs too)."""
    from edge_search.config import DEVICE_PRECISION

    prec, prov = deploy.get("precision"), deploy.get("execution_provider")
    names = list(deploy)
    if (prec is None or prov is None or not space.deploy["precision"].available_only or prec.choices is None
            or prov.type != "categorical" or prov.choices is None
            or names.index("execution_provider") > names.index("precision")):
        return
    table: dict[str, tuple[Scalar, ...]] = {}
    keep_providers: list[Scalar] = []
    for provider in prov.choices:
        path = capabilities.paths.get(str(provider))
        if path is None:
            keep_providers.append(provider)  # refused as a whole later, with its own reason
            continue
        ok = tuple(c for c in prec.choices if DEVICE_PRECISION.get(str(c)) in path.precisions)
        for c in prec.choices:
            if c not in ok:
                why = path.refused_precisions.get(str(DEVICE_PRECISION.get(str(c))),
                                                  f"{path.label} does not run {DEVICE_PRECISION.get(str(c))}")
                notes.append(f"deploy.precision: {c} not offered with execution_provider {provider}: {why}")
        if ok:
            table[str(provider)] = ok
            keep_providers.append(provider)
        else:
            notes.append(f"deploy.execution_provider: {provider} left out: it runs none of the space's precisions "
                         f"({', '.join(map(str, prec.choices))})")
    if not keep_providers:
        raise InputError(f"deploy.execution_provider: no offered provider of device '{capabilities.device}' runs "
                         f"any of the space's precisions ({', '.join(map(str, prec.choices))})")
    if tuple(keep_providers) != prov.choices:
        deploy["execution_provider"] = prov.model_copy(update={"choices": tuple(keep_providers)})
    if any(v != prec.choices for v in table.values()):
        deploy["precision"] = prec.model_copy(update={"choices_by": {"execution_provider": table}})


def parse_space(data: Any, origin: str) -> SearchSpace:
    """Validate space data; errors name the file, the field and the reason in one line.

    Besides the shape of the file, every value a deploy knob can take (a fixed value, each
    `choices` entry, each range bound, each `when` value) is checked against the knob's type
    (`check_deploy_values`), so a typo fails here, not trial by trial."""
    if not isinstance(data, Mapping):
        raise InputError(f"{origin}: a search space must be a YAML mapping")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(origin, err)) from None
    check_deploy_values(space, origin)
    return space


def _spec_values(spec: KnobSpec) -> list[Any]:
    """The literal values a knob spec names: its fixed value, its choices or its range bounds."""
    if spec.type == "fixed":
        return [spec.value]
    if spec.type == "categorical":
        return list(spec.choices or ())
    return [b for b in (spec.low, spec.high) if b is not None and b != "cores"]


def check_deploy_values(space: SearchSpace, origin: str) -> None:
    """Raise `InputError` (``origin: deploy.knob: value is not allowed (allowed: ...)``) for the
    first deploy knob value that the knob's type (`DeployConfig`) does not accept."""
    from edge_search.config import deploy_allowed, deploy_knob_kind, deploy_value_problem

    for name, spec in space.deploy.items():
        where = f"{origin}: deploy.{name}"
        kind = deploy_knob_kind(name)
        if spec.type in ("int", "float"):
            if kind not in ("int", "float"):
                article = "an" if spec.type == "int" else "a"
                raise InputError(f"{where}: {article} {spec.type} range ({spec.low}..{spec.high}) for a knob that "
                                 f"takes one of a set of values; list them as choices "
                                 f"(allowed: {deploy_allowed(name)})")
            if kind == "int" and spec.type == "float":
                raise InputError(f"{where}: a float range ({spec.low}..{spec.high}) for an integer knob "
                                 f"(allowed: {deploy_allowed(name)})")
        elif spec.high == "cores" and kind != "int":
            raise InputError(f"{where}: 'high: cores' needs an integer knob (allowed: {deploy_allowed(name)})")
        for value in _spec_values(spec):
            problem = deploy_value_problem(name, value)
            if problem:
                raise InputError(f"{where}: {problem}")
        for other, expected in (spec.when or {}).items():
            for value in expected if isinstance(expected, tuple) else (expected,):
                problem = deploy_value_problem(other, value)
                if problem:
                    raise InputError(f"{where}: when.{other}: {problem}")


def check_train_values(space: SearchSpace, defaults: Mapping[str, Any], task: str, origin: str) -> None:
    """Raise `InputError` for a train knob the task does not have, or a value of the wrong type.

    A task states its train knobs by their defaults (`Task.train_knobs`); a value must be of the
    default's type (a number for a float knob, an integer for an int knob, true/false for a flag, a
    string for a string; a knob whose default is None takes anything)."""
    from edge_search.config import shown

    for name, spec in space.train.items():
        if name not in defaults:
            raise InputError(f"{origin}: train.{name}: unknown train knob for task '{task}' "
                             f"(known: {', '.join(defaults)})")
        default = defaults[name]
        if default is None:
            continue
        if isinstance(default, bool):
            ok: Callable[[Any], bool] = lambda v: isinstance(v, bool)  # noqa: E731
            allowed = "true, false"
        elif isinstance(default, int):
            ok = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
            allowed = "an integer"
        elif isinstance(default, float):
            ok = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
            allowed = "a number"
        elif isinstance(default, str):
            ok = lambda v: isinstance(v, str)  # noqa: E731
            allowed = "a string"
        else:
            continue
        if spec.type == "float" and isinstance(default, int) and not isinstance(default, bool):
            raise InputError(f"{origin}: train.{name}: a float range ({spec.low}..{spec.high}) for an integer "
                             f"knob (allowed: {allowed}, like the default {shown(default)})")
        if spec.type in ("int", "float") and isinstance(default, bool | str):
            raise InputError(f"{origin}: train.{name}: a range for a knob that takes {allowed}; "
                             "list the values as choices")
        for value in _spec_values(spec):
            if not ok(value):
                raise InputError(f"{origin}: train.{name}: {shown(value)} is not allowed "
                                 f"(allowed: {allowed}, like the default {shown(default)})")


BUILTIN_SPACES = ("digits-cnn",)


def load_space(path_or_name: str | Path | None) -> SearchSpace:
    """Load a space from a YAML file, or a built-in one by name (default: `digits-cnn`)."""
    if path_or_name is None:
        path_or_name = "digits-cnn"
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        try:
            text = p.read_text()
        except OSError as err:
            raise InputError(f"{p}: cannot read: {err.strerror}") from None
        origin = str(p)
    else:
        res = resources.files("edge_search.spaces").joinpath(f"{path_or_name}.yaml")
        if not res.is_file():
            raise InputError(f"unknown space '{path_or_name}': not a file and not a built-in space")
        text, origin = res.read_text(), f"spaces/{path_or_name}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{origin}: not valid YAML{where}: {problem}") from None
    return parse_space(data, origin)


def _suggest_section(trial: Any, prefix: str, knobs: Mapping[str, KnobSpec], cores: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, full in knobs.items():
        if not full.condition_holds(out):
            continue
        key = full.param_key(prefix, name, out, cores)
        spec = full.narrowed(out, name, cores)
        if spec.type == "fixed":
            out[name] = spec.value
        elif spec.type == "categorical":
            assert spec.choices is not None
            out[name] = trial.suggest_categorical(key, list(spec.choices))
        else:
            assert spec.low is not None and spec.high is not None
            high = cores if spec.high == "cores" else spec.high
            if spec.type == "int":
                low_i, high_i = int(spec.low), int(high)
                if low_i > high_i:
                    raise InputError(f"{prefix}.{name}: range {low_i}..{high_i} is empty on a {cores}-core device")
                out[name] = trial.suggest_int(key, low_i, high_i, step=int(spec.step or 1), log=spec.log)
            else:
                out[name] = trial.suggest_float(key, float(spec.low), float(high),
                                                step=None if spec.step is None else float(spec.step), log=spec.log)
    return out


def suggest_config(space: SearchSpace, trial: Any, cores: int) -> dict[str, dict[str, Any]]:
    """Sample one configuration (define-by-run): `{"train": {...}, "deploy": {...}}`.

    Knobs whose `when` condition does not hold are not sampled and take their defaults; `high:
    cores` resolves to the device profile's core count.
    """
    return {"train": _suggest_section(trial, "train", space.train, cores),
            "deploy": _suggest_section(trial, "deploy", space.deploy, cores)}


# -- a discrete space, enumerated ----------------------------------------------------------------

RawConfig = dict[str, dict[str, Any]]


def knob_values(spec: KnobSpec, cores: int) -> list[Any] | None:
    """Every value a knob can take, or None when it has too many (a continuous range)."""
    if spec.type == "fixed":
        return [spec.value]
    if spec.type == "categorical":
        return list(spec.choices or ())
    assert spec.low is not None and spec.high is not None
    high = cores if spec.high == "cores" else spec.high
    if spec.type == "int":
        low_i, high_i, step = int(spec.low), int(high), int(spec.step or 1)
        if spec.log and step == 1:
            return list(range(low_i, high_i + 1))
        return list(range(low_i, high_i + 1, step))
    if spec.step is None:
        return None
    n = math.floor((float(high) - float(spec.low)) / float(spec.step) + 1e-9) + 1
    return [float(spec.low) + i * float(spec.step) for i in range(n)]


def enumerate_space(space: SearchSpace, cores: int, limit: int = 20_000) -> list[RawConfig] | None:
    """Every configuration of a discrete space (choices, fixed values, integer ranges, float ranges
    with a step; `when` honoured) in the shape `suggest_config` returns; None when a knob is
    continuous or there are more than `limit` of them. Used to know when a search has seen every
    configuration and to propose one it has not."""

    def section(knobs: Mapping[str, KnobSpec]) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = [{}]
        for name, spec in knobs.items():
            if knob_values(spec, cores) is None:
                return None
            grown: list[dict[str, Any]] = []
            for partial in out:
                if not spec.condition_holds(partial):
                    grown.append(partial)
                    continue
                grown += [{**partial, name: v} for v in knob_values(spec.narrowed(partial, name, cores), cores) or ()]
                if len(grown) > limit:
                    return None
            out = grown
        return out

    train, deploy = section(space.train), section(space.deploy)
    if train is None or deploy is None or len(train) * len(deploy) > limit:
        return None
    return [{"train": t, "deploy": d} for t in train for d in deploy]


def sampled_params(space: SearchSpace, config: Mapping[str, Mapping[str, Any]], cores: int | None = None
                   ) -> dict[str, Any]:
    """The Optuna params of a configuration (``train.lr``, ``deploy.precision@cpu``, ...): its searched
    knobs only, named as `suggest_config` on a `cores`-core device names them, as `study.enqueue_trial`
    takes them."""
    out: dict[str, Any] = {}
    for prefix, knobs in (("train", space.train), ("deploy", space.deploy)):
        section = config.get(prefix, {})
        for name, spec in knobs.items():
            if spec.type != "fixed" and name in section:
                out[spec.param_key(prefix, name, section, cores)] = section[name]
    return out


def knob_of_param(key: str) -> str:
    """The knob (``deploy.precision``) an Optuna parameter name (``deploy.precision@tensorrt``) samples."""
    return key.split("@", 1)[0]
