# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: site
short_description: Hosts and groups from a lotdeploy site spec
description:
  - Reads a lotdeploy site spec (C(site.yaml)) and gives the same hosts, groups and host
    variables as C(lotdeploy inventory), that is a group per site (C(site_<name>)), region
    (C(region_<name>)) and tag (C(tag_<name>)); per host how to reach it (host, port, user,
    key, host keys checked strictly against the site's known_hosts, a jump host as a
    ProxyCommand checked the same way) and its broker paths (C(lotdeploy_*)).
  - Settings resolve as lotdeploy resolves them (node, then region, then C(defaults), then
    a shared file the site C(extends)); relative paths are relative to the site file.
  - The plugin reads a site that C(lotdeploy validate) accepts; it does not validate it
    again. It needs no lotdeploy install, only PyYAML.
  - Every value is data, never templated (a site string holding "{{" stays text).
version_added: 0.1.0
author:
  - lotdeploy authors (@lotdeploy)
options:
  plugin:
    description: The name of this plugin; it makes the file an inventory source of it.
    required: true
    type: str
    choices: [lotdeploy.coreflux.site]
  site:
    description: The site spec; a relative path is relative to this inventory file.
    required: true
    type: str
"""

EXAMPLES = r"""
# plant-a.lotdeploy.yml
plugin: lotdeploy.coreflux.site
site: ../sites/plant-a/site.yaml
"""

import os
import re
import shlex

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin
from ansible.utils.unsafe_proxy import wrap_var

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    HAS_YAML = False

DEFAULT_BROKER = dict(
    admin_host="127.0.0.1",
    admin_port=1883,
    admin_user="root",
    tls_dir="/opt/coreflux/tls",
    cert_file="server.crt",
    key_file="server.key",
    ca_file="ca.crt",
    release_dir="/opt/lotdeploy",
    reload_command="systemctl restart coreflux-broker",
)
SHARED_KEYS = ("defaults", "regions", "ansible", "pki", "client_id_format", "transport")


def data(value):
    """`value` as data Ansible never templates: a string that Jinja could read as a template
    (it holds `{`) wrapped unsafe, as `lotdeploy inventory` tags it `!unsafe`; others as
    they are (an unsafe '0600' would read back as a number)."""
    if isinstance(value, str) and "{" in value:
        return wrap_var(value)
    return value


def group_name(kind, name):
    return "%s_%s" % (kind, re.sub(r"[^A-Za-z0-9_]", "_", name))


def literal(value):
    """As ssh reads it literally where it expands %-tokens."""
    return value.replace("%", "%%")


def shell_join(words):
    return " ".join(shlex.quote(w) for w in words)


def split_jump(jump):
    user, _sep, hostport = jump.rpartition("@")
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _sep, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif hostport.count(":") == 1:
        host, _sep, port = hostport.partition(":")
    return user, host, port


def merge(base, over):
    """`over` on top of `base`, mapping by mapping (what the site says wins)."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if key in base else value
    return out


def load_site(path):
    with open(path, "rb") as handle:
        doc = yaml.safe_load(handle.read().decode("utf-8"))
    if not isinstance(doc, dict) or "nodes" not in doc:
        raise AnsibleParserError("%s: not a lotdeploy site spec (no nodes:)" % path)
    extends = doc.get("extends")
    if extends:
        shared_path = os.path.join(os.path.dirname(path), extends)
        with open(shared_path, "rb") as handle:
            shared = yaml.safe_load(handle.read().decode("utf-8")) or {}
        doc = merge(dict((k, v) for k, v in shared.items() if k in SHARED_KEYS), doc)
    return doc


def resolve_hosts(doc, base_dir):
    """Each node's inventory variables, as `lotdeploy inventory` writes them."""

    def local(value):
        value = os.path.expanduser(value)
        return (
            value
            if os.path.isabs(value)
            else os.path.normpath(os.path.realpath(os.path.join(base_dir, value)))
        )

    defaults = doc.get("defaults") or {}
    regions = doc.get("regions") or {}
    hosts = {}
    for node in doc["nodes"]:
        region = node.get("region") or "default"
        layers = [layer for layer in (node, regions.get(region), defaults) if layer]

        def pick(key, default, layers=layers):
            for layer in layers:
                if layer.get(key) is not None:
                    return layer[key]
            return default

        def block(key, layers=layers):
            merged = {}
            for layer in reversed(layers):
                merged.update(
                    dict((k, v) for k, v in (layer.get(key) or {}).items() if v is not None)
                )
            return merged

        tls = bool(pick("tls", False))
        ssh = block("ssh")
        broker = dict(DEFAULT_BROKER)
        broker.update(block("broker"))
        known = (
            local(ssh["known_hosts"])
            if ssh.get("known_hosts")
            else os.path.expanduser("~/.ssh/known_hosts")
        )
        key = local(ssh["key"]) if ssh.get("key") else None
        user = ssh.get("user") or "root"
        strict = [
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UserKnownHostsFile=%s" % literal(known),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ]
        common = list(strict)
        if key is not None:
            common += ["-o", "IdentitiesOnly=yes"]
        if ssh.get("jump"):
            juser, jhost, jport = split_jump(ssh["jump"])
            proxy = ["ssh", *strict, "-p", literal(jport or "22"), "-l", literal(juser or user)]
            if key is not None:
                proxy += ["-o", "IdentitiesOnly=yes", "-i", literal(key)]
            proxy += ["-W", "%h:%p", literal(jhost)]
            common += ["-o", "ProxyCommand=%s" % shell_join(proxy)]
        found = dict(
            ansible_host=ssh.get("host") or node["address"],
            ansible_port=int(ssh.get("port") or 22),
            ansible_user=user,
        )
        if key is not None:
            found["ansible_ssh_private_key_file"] = literal(key)
        found["ansible_ssh_common_args"] = shell_join(common)
        found.update(
            lotdeploy_node=node["name"],
            lotdeploy_region=region,
            lotdeploy_release_dir=broker["release_dir"],
            lotdeploy_tls_dir=broker["tls_dir"],
            lotdeploy_tls=tls,
            lotdeploy_cert_file=broker["cert_file"],
            lotdeploy_key_file=broker["key_file"],
            lotdeploy_ca_file=broker["ca_file"],
            lotdeploy_reload_command=broker["reload_command"],
            lotdeploy_admin_host=broker["admin_host"],
            lotdeploy_admin_port=int(broker["admin_port"]),
            lotdeploy_admin_user=broker["admin_user"],
        )
        hosts[node["name"]] = (found, region, sorted(set(node.get("tags") or [])))
    return hosts


class InventoryModule(BaseInventoryPlugin):
    """Hosts, groups and variables from a lotdeploy site spec."""

    NAME = "lotdeploy.coreflux.site"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(
            (".lotdeploy.yml", ".lotdeploy.yaml")
        )

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        if not HAS_YAML:
            raise AnsibleParserError("the lotdeploy.coreflux.site inventory needs PyYAML")
        self._read_config_data(path)
        site_path = os.path.expanduser(self.get_option("site"))
        if not os.path.isabs(site_path):
            site_path = os.path.join(os.path.dirname(path), site_path)
        try:
            doc = load_site(site_path)
        except (IOError, OSError, ValueError, yaml.YAMLError) as exc:
            raise AnsibleParserError("cannot read the site %s: %s" % (site_path, exc))
        base_dir = os.path.dirname(os.path.realpath(site_path))
        site_group = self.inventory.add_group(group_name("site", str(doc["site"])))
        self.inventory.set_variable("all", "lotdeploy_site", data(str(doc["site"])))
        interpreter = (doc.get("ansible") or {}).get("python_interpreter") or "/usr/bin/python3"
        self.inventory.set_variable("all", "ansible_python_interpreter", data(interpreter))
        for name, (found, region, tags) in sorted(resolve_hosts(doc, base_dir).items()):
            self.inventory.add_host(name, group=site_group)
            for key, value in found.items():
                self.inventory.set_variable(name, key, data(value))
            self.inventory.add_host(
                name, group=self.inventory.add_group(group_name("region", region))
            )
            for tag in tags:
                self.inventory.add_host(
                    name, group=self.inventory.add_group(group_name("tag", tag))
                )
