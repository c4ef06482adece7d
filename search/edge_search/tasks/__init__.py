"""Tasks build, train, export and evaluate models. Registry: name -> lazy import path."""

from __future__ import annotations

import importlib
from typing import Any

from edge_search.errors import InputError
from edge_search.tasks.base import Task

#: Built-in tasks, imported only when used (torch is heavy and optional).
TASKS: dict[str, str] = {
    "digits-cnn": "edge_search.tasks.digits_cnn:DigitsCnnTask",
    "onnx": "edge_search.tasks.onnx_model:OnnxModelTask",
    "torch": "edge_search.tasks.torch_task:TorchModelTask",
}


def create_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """Instantiate a task by registry name; unknown names are an input error."""
    if name not in TASKS:
        raise InputError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})")
    module_name, _, attr = TASKS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == "torch":
            raise InputError(f"task '{name}' needs PyTorch: pip install 'edge-search[torch]'") from None
        raise
    cls = getattr(module, attr)
    task: Task = cls(**(options or {}))
    return task
