"""How lotdeploy reaches a node: one small interface (`base.Transport`), one implementation
per way in (`ssh` over fabric; Ansible comes beside it). Apply, verify, drift and doctor
only ever talk to a node through this interface."""
