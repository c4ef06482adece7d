"""One strict base for every file format and one place that words a pydantic error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError, model_validator

from edge_search.schema import StrictModel, format_validation_error, validation_problem


class Item(StrictModel):
    name: str = ""
    size: int


class Doc(StrictModel):
    version: int
    items: tuple[Item, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Doc:
        if self.version > 9:
            raise ValueError("version too new")
        return self


def _err(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Doc.model_validate(data)
    return info.value


def test_strict_models_forbid_unknown_fields_and_are_frozen() -> None:
    doc = Doc(version=1)
    with pytest.raises(ValidationError):
        doc.version = 2  # type: ignore[misc]
    err = _err({"version": 1, "colour": "red"})
    assert validation_problem(err).message == "Extra inputs are not permitted"
    assert format_validation_error("d.yaml", err, example="x.yaml") == \
        "d.yaml: colour: unknown field (check the spelling; see x.yaml)"


def test_locations_name_list_items_and_value_errors_lose_pydantic_prefix() -> None:
    data = {"version": 1, "items": [{"name": "a", "size": 1}, {"name": "big", "size": "x"}]}
    err = _err(data)
    assert format_validation_error("d.yaml", err, data) == \
        "d.yaml: items.1.size: Input should be a valid integer, unable to parse string as an integer"
    assert validation_problem(err, data, named_lists=("items",)).where == "items[1] (big).size"
    assert format_validation_error("d.yaml", _err({"version": 12})) == "d.yaml: (top level): version too new"


def test_missing_fields_keep_pydantic_words_unless_a_format_words_them() -> None:
    err = _err({})
    assert format_validation_error("d", err) == "d: version: Field required"
    assert format_validation_error("d", err, missing="required field is missing") == \
        "d: version: required field is missing"
