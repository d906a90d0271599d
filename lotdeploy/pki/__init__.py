"""Cluster PKI: the site CA, node certificates, their status, and phased CA rotation.

Public certificates live under `workspace.pki_dir`; private keys live only in the encrypted
secret store. `reports` reads public material only (no passphrase) for `certs list` and the
plan; `operations` issues what is due; `bundle` hands render each node's TLS files.
Phased rotation itself lives in lotdeploy.rotation (shared with the credentials).
"""
