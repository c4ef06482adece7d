"""Public test doubles and contract tests for code built on edge-search's seams.

- `FunctionDevice(handler)`: a real `Device` whose measurement is a function (like
  `httpx.MockTransport`): test a pipeline, a budget check or an agent without measuring anything.
- `edge_search.testing.contracts`: `DeviceContract`, `TransformContract` and `TaskContract`, pytest
  test classes that an implementation opts into by subclassing and providing one fixture (needs
  pytest).
"""

from edge_search.testing.devices import FunctionDevice

__all__ = ["FunctionDevice"]
