"""The lab's optional dependencies (`pip install 'lotdeploy[lab]'`) and the one message naming them.

The lab broker is amqtt underneath; root-mode latency without netem needs fnfqueue. Neither is
needed to compile, plan or render, so a plain `pip install lotdeploy` leaves them out.
"""

from __future__ import annotations

from importlib.util import find_spec

from lotdeploy.errors import LabError

MISSING_LAB_EXTRA = "the lab needs extra packages: pip install 'lotdeploy[lab]'"
#: What every lab node runs (the broker); checked before anything is started.
BROKER_PACKAGES = ("amqtt",)


def require_lab_extra(packages: tuple[str, ...] = BROKER_PACKAGES) -> None:
    """Raise the one LabError naming the extra if any of `packages` cannot be imported."""
    if any(find_spec(name) is None for name in packages):
        raise LabError(MISSING_LAB_EXTRA)
