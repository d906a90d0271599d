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


# -- under load (`verify --load`) ------------------------------------------------------------

#: Below this share of the offered rate, a link is falling behind.
KEEP_UP_SHARE = 0.9


def needed_validity_under_load(
    idle_latency_ms: float, max_delay_ms: float, reconnect_allowance: float
) -> int:
    """Seconds a message must be able to wait on a loaded link: the reconnect of the rule
    above (back-off plus four round trips at the idle latency), plus the longest a message
    waited in the link under the measured load, with the same factor 2.

    A lower bound: after a reconnect, the backlog it left drains at the link's spare
    capacity, which a probe at one rate does not show (probe a higher rate to see it).
    """
    return math.ceil(
        SAFETY_FACTOR
        * (
            reconnect_allowance
            + 2 * RECONNECT_ROUND_TRIPS * idle_latency_ms / 1000
            + max_delay_ms / 1000
        )
    )


def advise_load(
    source: str,
    target: str,
    rate: float,
    throughput: float,
    max_delay_ms: float,
    idle_latency_ms: float,
    validity_sec: int,
    reconnect_allowance: float,
    accepted_rate: float | None = None,
) -> Advice | None:
    """Advice for one link under load: the load held back before the link (the source took
    less than offered), the link falling behind (no window helps), or a window too short for
    the delay measured under that load (the vendor: "very large message volumes may require
    tuning MESSAGE_VALIDITY_SEC")."""
    needed = needed_validity_under_load(idle_latency_ms, max_delay_ms, reconnect_allowance)
    took = rate if accepted_rate is None else accepted_rate
    if took < KEEP_UP_SHARE * rate:
        message = (
            f"{source} → {target}: at {rate:g} msg/s offered, {source}'s broker took only "
            f"{took:g} msg/s (the probe waits for its acknowledgements), so the load was held "
            f"back before the link, which carried {throughput:g} msg/s of it; the source "
            "broker (or this machine) is the limit here: no MESSAGE_VALIDITY_SEC changes that"
        )
    elif throughput < KEEP_UP_SHARE * took:
        message = (
            f"{source} → {target}: at {took:g} msg/s the link carried {throughput:g} "
            f"msg/s: its queue grows by about {took - throughput:.0f} msg/s, and whatever waits "
            f"longer than MESSAGE_VALIDITY_SEC {validity_sec} s is dropped; no window keeps up "
            "with a link that falls behind: lower the rate, or find what slows the link"
        )
    elif validity_sec == 0 or validity_sec < needed:
        message = (
            f"{source} → {target}: at {rate:g} msg/s messages waited up to {max_delay_ms:g} ms "
            f"in the link; MESSAGE_VALIDITY_SEC {validity_sec} s is below the {needed} s one "
            f"reconnect ({reconnect_allowance:g} s back-off) plus that wait needs (a lower "
            f"bound): raise it to at least {needed}"
        )
    else:
        return None
    return Advice(source, target, max_delay_ms, validity_sec, needed, message)


def load_advice(checks: Iterable[Check], reconnect_allowance: float) -> list[Advice]:
    """Advice for every link the load probe measured (idle latency from its link check)."""
    listed = list(checks)
    idle = {c.subject: c.latency_ms for c in listed if c.kind == "link" and c.latency_ms}
    found = []
    for check in listed:
        pair = check.link
        if check.kind != "load" or pair is None or check.validity_sec is None:
            continue
        if check.rate is None or check.throughput is None or check.max_ms is None:
            continue
        advice = advise_load(
            pair[0],
            pair[1],
            check.rate,
            check.throughput,
            check.max_ms,
            idle.get(check.subject) or check.latency_ms or 0.0,
            check.validity_sec,
            reconnect_allowance,
            check.accepted_rate,
        )
        if advice is not None:
            found.append(advice)
    return found
