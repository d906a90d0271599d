"""Cluster PKI: the site CA, node certificates, their status, and phased CA rotation.

Public certificates live under `workspace.pki_dir`; private keys live only in the encrypted
secret store. `plan.pki_changes` reads public material only (no passphrase); `bundle`
issues what is due and hands render each node's TLS files.
"""
