# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How every module of the collection reaches a broker's command channel."""

    DOCUMENTATION = r"""
options:
  admin_host:
    description:
      - The broker's command channel as seen from where the module runs (the node's own
        loopback by default, as lotdeploy reaches it through SSH).
    type: str
    default: 127.0.0.1
  admin_port:
    description: Its MQTT port.
    type: int
    default: 1883
  admin_user:
    description: The admin user (needs the right to send commands and read their output).
    type: str
    default: root
  admin_password:
    description: The admin user's password. Never shown.
    type: str
    required: true
  admin_tls:
    description: Whether the command channel is MQTT over TLS.
    type: bool
    default: false
  admin_ca_file:
    description: CA bundle that verifies the command channel's certificate (with O(admin_tls)).
    type: path
  timeout:
    description: Seconds to wait for a broker's answer (the vendor's tools wait 15).
    type: float
    default: 15.0
  request_ids:
    description:
      - Whether commands carry C(-requestId). V(auto) asks the broker once and uses them
        only when it echoes them back (builds differ).
    type: str
    choices: [auto, always, never]
    default: auto
  mqtt_library:
    description:
      - A directory or zip on the host that holds the C(paho) package, used only when
        the host's Python lacks paho-mqtt (lotdeploy's export copies one to the node).
    type: path
"""
