"""The board agent: a small HTTP service that measures models on the board it runs on.

``edge-search agent serve`` starts it (`edge_search.agent.server.serve`); searches anywhere reach
it through `edge_search.devices.agent.AgentDevice`. The wire format lives in
`edge_search.agent.protocol`, the model checks in `edge_search.agent.security`, the priority queue
shared by server and client in `edge_search.agent.fairqueue`. This package imports nothing heavy:
FastAPI and uvicorn are imported only by `server`.
"""

from __future__ import annotations

from edge_search.agent.protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
