#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cluster_user
short_description: A broker user for cluster links (or probes) on a Coreflux broker
description:
  - Makes the broker accept a user with a password (C(-addUser), or C(-changeUserPassword)
    when the user exists), or removes it (C(-removeUser)).
  - No command lists a broker's users, so the module tells whether the user is as asked by
    logging in as it (MQTT CONNECT, then DISCONNECT) at O(login_host); a broker that accepts
    the login needs no change, and a rerun reports C(changed=false).
  - The cluster user must exist on every broker its peers' routes log in to, before those
    routes are added.
version_added: 0.1.0
author:
  - lotdeploy authors (@lotdeploy)
extends_documentation_fragment:
  - lotdeploy.coreflux.connection
options:
  name:
    description: The user name (one word).
    type: str
    required: true
  password:
    description: The user's password (one word). Required when O(state=present). Never shown.
    type: str
  state:
    description: Whether the user should exist.
    type: str
    choices: [present, absent]
    default: present
  login_host:
    description: Where the login check connects (default O(admin_host)).
    type: str
  login_port:
    description: Its port (default O(admin_port)).
    type: int
  login_tls:
    description: Whether the login check uses TLS (default O(admin_tls)).
    type: bool
notes:
  - Supports check mode. With O(state=absent) and no O(password) the module cannot tell
    whether the user exists without removing it; check mode then reports a change.
requirements:
  - paho-mqtt >= 2.1 (or O(mqtt_library) pointing at a copy)
"""

EXAMPLES = r"""
- name: The cluster user every peer's routes log in with
  lotdeploy.coreflux.cluster_user:
    name: cluster
    password: "{{ cluster_password }}"
    admin_password: "{{ admin_password }}"
"""

RETURN = r"""
action:
  description: What was (or would be) done, V(none), V(add), V(password) or V(remove).
  returned: always
  type: str
  sample: add
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
    describe,
    value_problem,
)


def run(module):
    p = module.params
    for label in ("name", "password"):
        if p[label] is not None:
            why = value_problem(p[label], word=True)
            if why:
                raise ChannelError("the %s %s" % (label, why))
    with CommandChannel(p) as channel:
        login = dict(host=p["login_host"], port=p["login_port"], tls=p["login_tls"])
        if p["state"] == "present":
            if channel.login_accepted(p["name"], p["password"], **login):
                return dict(changed=False, action="none", commands=channel.commands)
            action = "add"
            if not module.check_mode:
                reply = channel.add_user(p["name"], p["password"])
                if not reply["success"]:
                    if "exist" not in describe(reply).lower():
                        raise CommandFailed("addUser", reply)
                    channel.change_user_password(p["name"], p["password"])
                    action = "password"
            return dict(changed=True, action=action, commands=channel.commands)
        if module.check_mode:
            gone = p["password"] is not None and not channel.login_accepted(
                p["name"], p["password"], **login
            )
            return dict(
                changed=not gone, action="none" if gone else "remove", commands=channel.commands
            )
        reply = channel.remove_user(p["name"])
        if reply["success"]:
            return dict(changed=True, action="remove", commands=channel.commands)
        if "not found" in describe(reply).lower() or "not exist" in describe(reply).lower():
            return dict(changed=False, action="none", commands=channel.commands)
        raise CommandFailed("removeUser", reply)


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        password=dict(type="str", no_log=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        login_host=dict(type="str"),
        login_port=dict(type="int"),
        login_tls=dict(type="bool"),
    )
    argument_spec.update(CONNECTION_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ("password",))],
    )
    try:
        result = run(module)
    except ChannelError as exc:
        module.fail_json(msg="user %s: %s" % (module.params["name"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
