"""The base of every edge-search schema, and the one place that turns a pydantic error into words.

Every file format (search spaces, device profiles, budgets.yaml, check baselines, task options,
the agent's wire format) is a `StrictModel`: an unknown field is an error (a typo never passes
silently) and a parsed value is immutable. `validation_problem` reads the first error of a
`ValidationError` as (where, what); `format_validation_error` makes it the one line the CLI prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

VALUE_ERROR_PREFIX = "Value error, "


class StrictModel(BaseModel):
    """A schema: unknown fields are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ValidationProblem:
    """The first error of a `ValidationError`: where it is and what is wrong, in words."""

    where: str
    """Dotted location (``train.lr.low``, ``models[0] (name).budgets``); empty at the top level."""
    message: str


def validation_problem(err: ValidationError, data: Any = None, *, example: str | None = None,
                       missing: str | None = None, named_lists: Sequence[str] = ()) -> ValidationProblem:
    """The first error of `err`, located and worded for a user.

    `example`: a file showing the format; an unknown field then reads "unknown field (check the
    spelling; see `example`)". `missing`: the wording of a missing required field (default:
    pydantic's). `named_lists`: list fields whose items are named in the location by their
    ``name`` (or ``model``) in `data`, e.g. ``models[1] (resnet)``. Pydantic's internal location
    parts (``function-after[...]``) and its "Value error, " prefix are dropped.
    """
    first = err.errors()[0]
    loc = [p for p in first["loc"] if not str(p).startswith("function-")]
    parts: list[str] = []
    node = data
    for i, p in enumerate(loc):
        if isinstance(p, int) and i > 0 and loc[i - 1] in named_lists and parts:
            name = ""
            try:
                entry = node[p]
                name = str(entry.get("name") or entry.get("model") or "")
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
            parts[-1] = f"{parts[-1]}[{p}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(p))
        try:
            node = node[p] if node is not None else None
        except (KeyError, IndexError, TypeError):
            node = None
    message = str(first["msg"])
    if first["type"] == "extra_forbidden" and example:
        message = f"unknown field (check the spelling; see {example})"
    elif first["type"] == "missing" and missing:
        message = missing
    else:
        message = message.removeprefix(VALUE_ERROR_PREFIX)
    return ValidationProblem(".".join(parts), message)


def format_validation_error(origin: str, err: ValidationError, data: Any = None, **wording: Any) -> str:
    """``origin: where: what`` for the first error of `err` (``(top level)`` when it has no location);
    `wording` is passed to `validation_problem`."""
    problem = validation_problem(err, data, **wording)
    return f"{origin}: {problem.where or '(top level)'}: {problem.message}"
