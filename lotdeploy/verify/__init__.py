"""`lotdeploy verify`: prove every node runs what state says and every link carries messages.

`run_verify(site, workspace, transports, nodes=..., options=...)` returns a `VerifyResult`
(pure data: one `Check` per node check and per link check, pass / fail / inconclusive with
the reason). It is also the rollout gate: with `nodes`, the node checks run on those nodes
and every link into or out of them is probed. See docs/verify.md.

* `result`: the result types (pure data); `advice`: the message-validity rule;
* `probe`: the MQTT probes; `run`: `run_verify`, the checks and their orchestration;
* `output`: terminal text, Prometheus, the last result; `report`: the HTML page.

The names below are imported lazily (PEP 562): `plan` reads the last result's advice
without loading the SSH and MQTT clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lotdeploy.verify.result import Advice, Check, NodeInfo, Status, VerifyResult
    from lotdeploy.verify.run import VerifyOptions, run_verify

_HOMES = {
    "Advice": "result",
    "Check": "result",
    "NodeInfo": "result",
    "Status": "result",
    "VerifyResult": "result",
    "VerifyOptions": "run",
    "run_verify": "run",
}

__all__ = ["Advice", "Check", "NodeInfo", "Status", "VerifyOptions", "VerifyResult", "run_verify"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
