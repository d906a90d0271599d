#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cluster_verify
short_description: Prove every cluster link of this node carries messages, exactly once
description:
  - Probes the links between this node and each of O(peers) the way C(lotdeploy verify)
    does, from the node itself. It connects to the node's own broker (O(admin_host),
    loopback by default) and to each peer's broker at the peer's cluster address and port
    (the path the routes take; TLS verified with O(ca_file) and the peer's address as the
    server name), as the probe user, and subscribes to the run's probe topics everywhere.
  - For a link out of the node (V(out)), probes are published on the node's broker and
    must arrive at the peer's; for a link into it (V(in)), published on the peer's broker
    and must arrive at the node's. Each probe must arrive exactly once within
    O(probe_timeout); latency is the median from the probe's echo on its source to its
    arrival (on this host's clock).
  - Probes are QoS 1, never retained, on C(<topic_prefix><run id>/<source>/<n>), so nothing
    stays on any broker.
  - Fails (so the play fails, or a rollout wave stops at its gate) when a link does not
    pass, naming each one and why.
version_added: 0.1.0
author:
  - lotdeploy authors (@lotdeploy)
options:
  node:
    description: This node's name (the source or target of its links in the result).
    type: str
    required: true
  peers:
    description:
      - The peers whose links to (and from) this node are probed, each with C(name),
        C(address), C(port) and C(tls) (what its cluster listener needs).
    type: list
    elements: dict
    required: true
  direction:
    description: Which links are probed.
    type: str
    choices: [out, in, both]
    default: out
  probe_user:
    description: The user probes connect as (it must exist on every broker; never the admin).
    type: str
    required: true
  probe_password:
    description: Its password. Never shown.
    type: str
    required: true
  admin_host:
    description: This node's broker as seen from the node.
    type: str
    default: 127.0.0.1
  admin_port:
    description: Its port.
    type: int
    default: 1883
  ca_file:
    description: CA bundle that verifies the peers' TLS listeners.
    type: path
  probes:
    description: Probes per link.
    type: int
    default: 5
  probe_timeout:
    description: Seconds every probe has to arrive.
    type: float
    default: 5.0
  topic_prefix:
    description: Where probes are published.
    type: str
    default: lotdeploy/probe/
  fail_on_link_failure:
    description: Fail the task when a link does not pass.
    type: bool
    default: true
  mqtt_library:
    description:
      - A directory or zip holding the C(paho) package, used when the host's Python lacks it.
    type: path
notes:
  - Supports check mode (probes change nothing).
requirements:
  - paho-mqtt >= 2.1 (or O(mqtt_library) pointing at a copy)
"""

EXAMPLES = r"""
- name: Every link out of this node carries messages
  lotdeploy.coreflux.cluster_verify:
    node: "{{ inventory_hostname }}"
    peers:
      - {name: eu2, address: 198.18.0.12, port: 8883, tls: true}
    probe_user: lotdeploy_probe
    probe_password: "{{ probe_password }}"
    ca_file: /opt/coreflux/tls/ca.crt
"""

RETURN = r"""
links:
  description: One entry per probed link.
  returned: always
  type: list
  elements: dict
  sample: [{"source": "eu1", "target": "eu2", "ok": true, "sent": 5, "received": 5,
            "duplicates": 0, "latency_ms": 1.6, "reason": "5 probe(s) arrived once"}]
failed_links:
  description: The links that did not pass, as C(source -> target).
  returned: always
  type: list
  elements: str
run_id:
  description: The probe run's id (its topics are under O(topic_prefix)).
  returned: always
  type: str
"""

import json
import time
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lotdeploy.coreflux.plugins.module_utils.coreflux import (
    ChannelError,
    Connection,
    load_paho,
)


def median(values):
    values = sorted(values)
    if not values:
        return None
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2.0


def run(module):
    p = module.params
    mqtt = load_paho(p["mqtt_library"])
    run_id = "%s-%s" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime()), uuid.uuid4().hex[:6])
    base = "%s%s" % (p["topic_prefix"], run_id)
    me = p["node"]
    peers = dict((str(peer["name"]), peer) for peer in p["peers"] if str(peer["name"]) != me)
    links = []
    if p["direction"] in ("out", "both"):
        links += [(me, name) for name in sorted(peers)]
    if p["direction"] in ("in", "both"):
        links += [(name, me) for name in sorted(peers)]
    conns = {}
    problems = {}  # node -> why it could not be reached
    timeout = p["probe_timeout"]

    def open_one(name, host, port, tls):
        conn = Connection(
            mqtt,
            host,
            port,
            p["probe_user"],
            p["probe_password"],
            tls,
            p["ca_file"],
            timeout=max(timeout, 5.0),
        )
        try:
            conn.connect()
            conn.subscribe(["%s/#" % base])
        except ChannelError as exc:
            conn.close()
            problems[name] = str(exc)
            return
        conns[name] = conn

    try:
        open_one(me, p["admin_host"], p["admin_port"], False)
        for name, peer in sorted(peers.items()):
            open_one(name, str(peer["address"]), int(peer["port"]), bool(peer.get("tls")))
        sources = sorted(set(s for s, t in links))
        sent = {}
        for source in sources:
            conn = conns.get(source)
            if conn is None:
                continue
            for seq in range(p["probes"]):
                payload = json.dumps({"run": run_id, "source": source, "seq": seq})
                try:
                    conn.publish("%s/%s/%d" % (base, source, seq), payload, qos=1)
                    sent[(source, seq)] = time.monotonic()
                except ChannelError as exc:
                    problems.setdefault(source, str(exc))
                    break
        arrivals = {}  # (source, seq, at) -> [arrival times]
        deadline = time.monotonic() + timeout
        expected = set(
            (s, t, seq)
            for s, t in links
            for seq in range(p["probes"])
            if (s, seq) in sent and t in conns
        )
        seen = set()
        while time.monotonic() < deadline and not expected <= seen:
            for name, conn in conns.items():
                for _dummy in range(10000):
                    try:
                        topic, payload, at = conn.messages.get_nowait()
                    except Exception:  # queue.Empty  pylint: disable=broad-except
                        break
                    parts = topic[len(base) + 1 :].split("/")
                    if len(parts) != 2 or not parts[1].isdigit():
                        continue
                    key = (parts[0], name, int(parts[1]))
                    arrivals.setdefault(key, []).append(at)
                    seen.add(key)
            time.sleep(0.02)
        time.sleep(0.2)  # a duplicate comes right behind the first delivery
        for name, conn in conns.items():
            for _dummy in range(10000):
                try:
                    topic, payload, at = conn.messages.get_nowait()
                except Exception:  # pylint: disable=broad-except
                    break
                parts = topic[len(base) + 1 :].split("/")
                if len(parts) == 2 and parts[1].isdigit():
                    arrivals.setdefault((parts[0], name, int(parts[1])), []).append(at)
    finally:
        for conn in conns.values():
            conn.close()
    result_links = []
    failed = []
    for source, target in links:
        entry = dict(
            source=source,
            target=target,
            sent=0,
            received=0,
            duplicates=0,
            latency_ms=None,
            ok=False,
        )
        why = problems.get(source) or problems.get(target)
        if why:
            entry["reason"] = "cannot probe: %s" % why
        else:
            latencies = []
            for seq in range(p["probes"]):
                if (source, seq) not in sent:
                    continue
                entry["sent"] += 1
                got = arrivals.get((source, target, seq), [])
                if got:
                    entry["received"] += 1
                    entry["duplicates"] += len(got) - 1
                    echo = arrivals.get((source, source, seq), [sent[(source, seq)]])
                    latencies.append(max(0.0, got[0] - echo[0]) * 1000.0)
            latency = median(latencies)
            entry["latency_ms"] = round(latency, 1) if latency is not None else None
            lost = entry["sent"] - entry["received"]
            entry["ok"] = entry["sent"] == p["probes"] and lost == 0 and not entry["duplicates"]
            if entry["ok"]:
                entry["reason"] = "%d probe(s) arrived once, median %.1f ms" % (
                    entry["received"],
                    latency,
                )
            elif entry["received"] == 0:
                entry["reason"] = "no probe arrived in %gs" % timeout
            else:
                entry["reason"] = "%d of %d probe(s) arrived, %d lost, %d duplicate(s)" % (
                    entry["received"],
                    entry["sent"],
                    lost,
                    entry["duplicates"],
                )
        if not entry["ok"]:
            failed.append("%s -> %s: %s" % (source, target, entry["reason"]))
        result_links.append(entry)
    return dict(changed=False, links=result_links, failed_links=failed, run_id=run_id)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            node=dict(type="str", required=True),
            peers=dict(type="list", elements="dict", required=True),
            direction=dict(type="str", default="out", choices=["out", "in", "both"]),
            probe_user=dict(type="str", required=True),
            probe_password=dict(type="str", required=True, no_log=True),
            admin_host=dict(type="str", default="127.0.0.1"),
            admin_port=dict(type="int", default=1883),
            ca_file=dict(type="path"),
            probes=dict(type="int", default=5),
            probe_timeout=dict(type="float", default=5.0),
            topic_prefix=dict(type="str", default="lotdeploy/probe/"),
            fail_on_link_failure=dict(type="bool", default=True),
            mqtt_library=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except ChannelError as exc:
        module.fail_json(msg=str(exc))
    if result["failed_links"] and module.params["fail_on_link_failure"]:
        module.fail_json(
            msg="%d link(s) failed: %s"
            % (len(result["failed_links"]), "; ".join(result["failed_links"])),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
