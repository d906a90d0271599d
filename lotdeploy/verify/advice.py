"""Message-validity advice: is each link's MESSAGE_VALIDITY_SEC long enough for the link?

MESSAGE_VALIDITY_SEC is how long a message may wait at the sending node for its link
(docs/lab-broker.md: age since the node received it, checked when the link sends it). A
message published while the link is down survives only if the link is back, and has
carried it, within that window. So the window must cover one reconnect of the link, with a
margin, plus the delivery itself:

    needed = 2 × (R + 9 × L)

* L is the link's measured latency (the median of the probes, one way);
* a reconnect is a TCP handshake, a TLS handshake and MQTT CONNECT/CONNACK, about four
  round trips (8 × L), after waiting up to the broker's reconnect back-off R (default 5 s:
  the lab broker's `--link-backoff-max`; set `--reconnect-allowance` to your broker's);
* delivering the message after that is one more L;
* the factor 2 is the margin for one failed attempt (jitter, a lost SYN) before the one
  that works.

Verify warns when the configured window is below `needed`, and always when it is 0 ("only
while connected": everything published during a reconnect is dropped). Advice never fails
a check: it is shown beside the latency, in the report, and repeated by `plan` from the last
verify (`last.json`). At lab latencies (1–80 ms) the rule asks 10–12 s, so the defaults
(30 s in a region, 120 s across) pass; a 2 s satellite hop asks 46 s, so a 30 s window warns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lotdeploy.verify.result import Advice, Check

#: Round trips one reconnect costs: TCP, TLS (1.2: two), MQTT CONNECT/CONNACK.
RECONNECT_ROUND_TRIPS = 4
SAFETY_FACTOR = 2


def needed_validity(latency_ms: float, reconnect_allowance: float) -> int:
    """Seconds a message must be able to wait for this link (the rule above)."""
    one_way = latency_ms / 1000
    return math.ceil(
        SAFETY_FACTOR * (reconnect_allowance + (2 * RECONNECT_ROUND_TRIPS + 1) * one_way)
    )


def advise(
    source: str, target: str, latency_ms: float, validity_sec: int, reconnect_allowance: float
) -> Advice | None:
    needed = needed_validity(latency_ms, reconnect_allowance)
    if validity_sec == 0:
        message = (
            f"{source} → {target}: MESSAGE_VALIDITY_SEC is 0 (only while connected): messages "
            f"published during a reconnect are dropped; {needed} s would cover one reconnect at "
            f"{latency_ms:g} ms"
        )
    elif validity_sec < needed:
        message = (
            f"{source} → {target}: MESSAGE_VALIDITY_SEC {validity_sec} s looks too short for a "
            f"link of {latency_ms:g} ms: one reconnect plus delivery needs about {needed} s "
            f"(2 × ({reconnect_allowance:g} s back-off + 9 × {latency_ms:g} ms)); raise it to "
            f"at least {needed}"
        )
    else:
        return None
    return Advice(source, target, latency_ms, validity_sec, needed, message)


def validity_advice(checks: Iterable[Check], reconnect_allowance: float) -> list[Advice]:
    """Advice for every probed link whose window is below what its latency needs."""
    found = []
    for check in checks:
        pair = check.link
        if check.kind != "link" or pair is None or check.latency_ms is None:
            continue
        if check.validity_sec is None:
            continue
        advice = advise(pair[0], pair[1], check.latency_ms, check.validity_sec, reconnect_allowance)
        if advice is not None:
            found.append(advice)
    return found
