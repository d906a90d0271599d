#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cluster_route
short_description: An MQTT_CLUSTER route on a Coreflux broker, through its command channel
description:
  - Makes the broker run one C(MQTT_CLUSTER) route (a link to one peer of a full mesh) as
    described, or no such route.
  - Reads what the broker runs first (C(-listRoutes) and the route's code, republished on
    C($SYS/Coreflux/Routes/<name>)), and changes it only when it differs, so a rerun
    reports C(changed=false).
  - A change removes the route, then adds it (what the vendor's own editor does, and safe
    on every broker build), unless O(replace=in_place) says the broker replaces a route
    added again under its name.
  - Only routes whose names start with O(owned_prefix) are ever touched; C(-removeAllRoutes)
    is never sent.
version_added: 0.1.0
author:
  - lotdeploy authors (@lotdeploy)
extends_documentation_fragment:
  - lotdeploy.coreflux.connection
options:
  name:
    description: The route's name (a LOT identifier, also a topic level).
    type: str
    required: true
  state:
    description: Whether the route should exist.
    type: str
    choices: [present, absent]
    default: present
  broker_address:
    description: C(BROKER_ADDRESS), the peer's address. Required when O(state=present).
    type: str
  broker_port:
    description: C(BROKER_PORT), the peer's port. Required when O(state=present).
    type: int
  client_id:
    description: C(CLIENT_ID), unique in the cluster. Required when O(state=present).
    type: str
  username:
    description: C(USERNAME) the route logs in to the peer with.
    type: str
  password:
    description: C(PASSWORD) the route logs in to the peer with. Never shown.
    type: str
  message_validity_sec:
    description: C(MESSAGE_VALIDITY_SEC).
    type: int
  use_tls:
    description: Whether the link uses TLS (C(WITH USE_TLS true)).
    type: bool
    default: false
  owned_prefix:
    description: The route names this module may touch.
    type: str
    default: lotdeploy_
  replace:
    description:
      - How a route that differs is replaced. V(remove_first) removes it, then adds it (the
        peer link drops briefly). V(in_place) adds it again under its name, for brokers
        known to replace (C(lotdeploy doctor) tells).
    type: str
    choices: [remove_first, in_place]
    default: remove_first
  code_wait:
    description:
      - Seconds to wait for the route's code on C($SYS/Coreflux/Routes/<name>). A broker
        that publishes none leaves the module unable to compare; see O(on_unreadable).
    type: float
    default: 3.0
  on_unreadable:
    description:
      - What to do with an existing route whose code cannot be read.
      - V(replace) replaces it (always correct, never idempotent on such a broker);
        V(keep) leaves it (idempotent, but a changed route goes unnoticed); V(fail) fails.
    type: str
    choices: [replace, keep, fail]
    default: replace
  update_password:
    description:
      - When the broker shows no password in the route's code (masked, or a secret
        reference), whether a route otherwise equal is replaced anyway (V(always)) or kept
        (V(on_create)).
    type: str
    choices: [always, on_create]
    default: on_create
notes:
  - Runs on the node by default, against its local command channel (O(admin_host)).
  - Supports check mode and diff mode; the diff masks the password.
requirements:
  - paho-mqtt >= 2.1 (or O(mqtt_library) pointing at a copy)
"""

EXAMPLES = r"""
- name: The route from this node to eu2
  lotdeploy.coreflux.cluster_route:
    name: lotdeploy_eu2
    broker_address: 198.18.0.12
    broker_port: 8883
    client_id: eu1-to-eu2
    username: cluster
    password: "{{ cluster_password }}"
    message_validity_sec: 30
    use_tls: true
    admin_password: "{{ admin_password }}"

- name: No route to a peer that left the cluster
  lotdeploy.coreflux.cluster_route:
    name: lotdeploy_old
    state: absent
    admin_password: "{{ admin_password }}"
"""

RETURN = r"""
action:
  description: What was (or in check mode would be) done, V(none), V(add), V(replace) or V(remove).
  returned: always
  type: str
  sample: replace
code_read:
  description: Whether the broker's code for the route could be read and compared.
  returned: always
  type: bool
commands:
  description: The command verbs sent to the broker (never their arguments).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lotdeploy.coreflux.plugins.module_utils.coreflux import (
    CONNECTION_ARGS,
    ChannelError,
    CommandChannel,
    CommandFailed,
    check_route_name,
    masked,
    route_text,
    split_password,
)


def desired_code(p):
    return route_text(
        p["name"],
        p["broker_address"],
        p["broker_port"],
        p["client_id"],
        p["username"],
        p["password"],
        p["message_validity_sec"],
        p["use_tls"],
    )


def decide(p, listed, code):
    """(action, code_read) for a route the listing has or not, with its code or None."""
    if p["state"] == "absent":
        return ("remove" if listed else "none"), code is not None
    if not listed:
        return "add", False
    if code is None:
        return {"replace": "replace", "keep": "none", "fail": "fail"}[p["on_unreadable"]], False
    have, have_password = split_password(code)
    want, want_password = split_password(desired_code(p))
    if have != want:
        return "replace", True
    if have_password is None or have_password == "********":
        return ("replace" if p["update_password"] == "always" else "none"), True
    return ("none" if have_password == want_password else "replace"), True


def run(module):
    p = module.params
    check_route_name(p["name"], p["owned_prefix"])
    if p["state"] == "present":
        desired_code(p)  # refuses a value LOT cannot hold before anything is sent
    with CommandChannel(p) as channel:
        names = [str(r.get("name")) for r in channel.list_routes()]
        listed = p["name"] in names
        code = None
        if listed:
            code = channel.route_codes([p["name"]], p["code_wait"]).get(p["name"])
        action, code_read = decide(p, listed, code)
        if action == "fail":
            raise ChannelError(
                "route %s exists but its code could not be read within %gs "
                "(on_unreadable=fail)" % (p["name"], p["code_wait"])
            )
        result = dict(changed=action != "none", action=action, code_read=code_read)
        if module._diff:
            result["diff"] = dict(
                before=masked(code) + "\n"
                if code
                else ("(present, code unreadable)\n" if listed else ""),
                after=masked(desired_code(p)) + "\n" if p["state"] == "present" else "",
            )
        if not module.check_mode and action != "none":
            if action in ("remove", "replace") and (
                action == "remove" or p["replace"] == "remove_first"
            ):
                channel.remove_route(p["name"])
            if action in ("add", "replace"):
                reply = channel.command("addRoute", desired_code(p))
                if (
                    not reply["success"]
                    and action == "add"
                    and "exist" in str(reply.get("message", "")).lower()
                ):
                    channel.remove_route(p["name"])  # it was there after all
                    reply = channel.command("addRoute", desired_code(p))
                if not reply["success"]:
                    raise CommandFailed("addRoute", reply)
        result["commands"] = channel.commands
        return result


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        broker_address=dict(type="str"),
        broker_port=dict(type="int"),
        client_id=dict(type="str"),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        message_validity_sec=dict(type="int"),
        use_tls=dict(type="bool", default=False),
        owned_prefix=dict(type="str", default="lotdeploy_"),
        replace=dict(type="str", default="remove_first", choices=["remove_first", "in_place"]),
        code_wait=dict(type="float", default=3.0),
        on_unreadable=dict(type="str", default="replace", choices=["replace", "keep", "fail"]),
        update_password=dict(
            type="str", default="on_create", choices=["always", "on_create"], no_log=False
        ),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ("broker_address", "broker_port", "client_id"))],
    )
    try:
        result = run(module)
    except ChannelError as exc:
        module.fail_json(msg="route %s: %s" % (module.params["name"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
