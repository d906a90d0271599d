"""lotdeploy: compile, deploy and verify Coreflux MQTT_CLUSTER meshes from one site spec.

The pipeline, one package or module per stage:
spec (load, validate) -> model/topology -> compiler (templates, LOT grammar) -> pki/secrets
-> plan -> transports -> broker client -> apply/verify/rollout; the lab beside it; the
command line (`cli/`) on top.
"""

# The one place of the version: hatch reads it from here for the package metadata
# (pyproject `dynamic = ["version"]`), so the CLI needs no importlib.metadata at start-up.
__version__ = "0.1.0"
