#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: route_info
short_description: The routes a Coreflux broker runs, and whether each is connected
description:
  - Lists the broker's routes (C(-listRoutes)) with their connection and health.
  - With O(wait_connected), waits (bounded by O(wait_timeout)) until every route in
    O(names) is listed C(Connected), and fails naming each one that is not, with the
    broker's last error for it (C(-checkRouteConnection)). A broker whose listing reports
    no connection state (1.x text replies) cannot be waited for; the result says so.
  - Never changes anything.
version_added: 0.1.0
author:
  - lotdeploy authors (@lotdeploy)
extends_documentation_fragment:
  - lotdeploy.coreflux.connection
options:
  names:
    description: The routes expected on the broker (all listed routes are returned anyway).
    type: list
    elements: str
    default: []
  owned_prefix:
    description:
      - Listed routes with this prefix that are not in O(names) are returned as RV(extra).
    type: str
    default: lotdeploy_
  wait_connected:
    description: Wait until every route in O(names) is C(Connected).
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait_connected).
    type: float
    default: 15.0
notes:
  - Supports check mode (it changes nothing).
requirements:
  - paho-mqtt >= 2.1 (or O(mqtt_library) pointing at a copy)
"""

EXAMPLES = r"""
- name: The routes this node's broker runs
  lotdeploy.coreflux.route_info:
    names: [lotdeploy_eu2, lotdeploy_us1]
    wait_connected: true
    admin_password: "{{ admin_password }}"
  register: routes
"""

RETURN = r"""
routes:
  description: Every route the broker lists.
  returned: always
  type: list
  elements: dict
  sample:
    - name: lotdeploy_eu2
      type: MQTT_CLUSTER
      connection: Connected
      health: Green
missing:
  description: Routes in O(names) the broker does not list.
  returned: always
  type: list
  elements: str
extra:
  description: Listed routes with O(owned_prefix) that are not in O(names).
  returned: always
  type: list
  elements: str
not_connected:
  description: Routes in O(names) that are not C(Connected) (after the wait).
  returned: always
  type: list
  elements: str
connection_state:
  description: Whether the broker's listing reports a connection state at all.
  returned: always
  type: bool
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lotdeploy.coreflux.plugins.module_utils.coreflux import (
    CONNECTION_ARGS,
    ChannelError,
    CommandChannel,
)

POLL = 0.5


def run(module):
    p = module.params
    names = list(p["names"] or [])
    with CommandChannel(p) as channel:
        deadline = time.monotonic() + (p["wait_timeout"] if p["wait_connected"] else 0.0)
        for _dummy in range(100000):  # bounded in count as well as in time
            routes = channel.list_routes()
            listed = dict((str(r.get("name")), r) for r in routes)
            stated = any(r.get("connection") is not None for r in routes)
            waiting = [n for n in names if listed.get(n, {}).get("connection") != "Connected"]
            if not waiting or not stated or time.monotonic() >= deadline:
                break
            time.sleep(min(POLL, max(deadline - time.monotonic(), 0.0)))
        result = dict(
            changed=False,
            routes=routes,
            missing=[n for n in names if n not in listed],
            extra=sorted(
                n
                for n in listed
                if p["owned_prefix"] and n.startswith(p["owned_prefix"]) and n not in names
            ),
            not_connected=waiting if stated else [],
            connection_state=stated,
        )
        if p["wait_connected"] and stated and waiting:
            details = []
            for name in waiting[:5]:
                last = None
                if name in listed:
                    try:
                        last = channel.check_route_connection(name).get("lastError")
                    except ChannelError:
                        last = None
                state = listed.get(name, {}).get("connection") or "not on the broker"
                details.append("%s (%s%s)" % (name, state, ": %s" % last if last else ""))
            result["msg"] = "%d route(s) not Connected after %gs: %s" % (
                len(waiting),
                p["wait_timeout"],
                ", ".join(details),
            )
            result["failed"] = True
        return result


def main():
    argument_spec = dict(
        names=dict(type="list", elements="str", default=[]),
        owned_prefix=dict(type="str", default="lotdeploy_"),
        wait_connected=dict(type="bool", default=False),
        wait_timeout=dict(type="float", default=15.0),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = run(module)
    except ChannelError as exc:
        module.fail_json(msg=str(exc))
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
