"""Adopt the clusters operators already have: audit them, import them, take them over.

* `survey`: read every broker of a cluster live (routes, their code, states; logins and
  `$SYS` rights); read-only.
* `findings`: what is wrong with a surveyed cluster, one finding per line (pure).
* `infer`: the site spec and the workspace records that reproduce a surveyed cluster
  (pure); `importer` writes them.
* `takeover`: the phased changes from a hand-made cluster to lotdeploy's conventions.

docs/adopt.md walks an operator through it.
"""
