"""The Ansible transport: generated inventories, the shipped playbooks, ansible-runner.

The SSH transport (lotdeploy.transport.ssh) sets the behaviour; this package delivers the
same files to the same places with Ansible (docs/ansible.md). Activation through the broker's
command channel stays lotdeploy's (lotdeploy.apply.activate), reached over an OpenSSH port
forward built from the same host vars as the inventory (lotdeploy.transport.openssh).
"""

from __future__ import annotations

from pathlib import Path

#: The playbooks shipped in the package (the repository's top-level `playbooks/` links here).
PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
