"""`lotdeploy verify`: prove every node runs what state says and every link carries messages.

`run_verify(site, workspace, transports, nodes=..., options=...)` returns a `VerifyResult`
(pure data: one `Check` per node check and per link check, pass / fail / inconclusive with
the reason). It is also the rollout gate: with `nodes`, the node checks run on those nodes
and every link into or out of them is probed. See docs/verify.md.
"""

from __future__ import annotations

from lotdeploy.verify.result import Advice, Check, NodeInfo, Status, VerifyResult
from lotdeploy.verify.run import VerifyOptions, run_verify

__all__ = ["Advice", "Check", "NodeInfo", "Status", "VerifyOptions", "VerifyResult", "run_verify"]
