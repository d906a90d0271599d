"""Which Coreflux broker variant the lab broker plays: the knobs `lotdeploy doctor` detects.

lotdeploy's assumptions about a broker differ between broker generations and builds; doctor
asks a real broker which of them hold. So that doctor and apply can be tested against every
answer, the lab broker can play each variant. The default is today's behaviour: a 2.x broker
with JSON envelopes.

=====================  =========================  ==============================================
Knob                   Values (default first)     Emulates, and why it matters
=====================  =========================  ==============================================
`replies`              "json", "text"             2.x JSON envelopes / 1.x plain-text lines
                                                  (`Route 'X' added successfully`, `Parsing
                                                  error: ... (line,col)`, `Route 'X' not found`,
                                                  `Unknown command: -x`, `Permission denied`):
                                                  the client must fall back to reading text,
                                                  which carries no requestId and no `data`.
`echo_request_id`      True, False                a broker that strips a trailing `-requestId
                                                  <id>` and never echoes it (text replies never
                                                  do): the client's `request_ids="auto"` probe
                                                  must notice and match replies by order.
`readd`                "reject", "overwrite"      re-adding an existing route name fails with
                                                  "already exists" (the vendor's rules) or
                                                  replaces the route (its models and actions):
                                                  apply removes first; overwrite also takes a
                                                  plain add.
`route_code_missing`   frozenset(), {"USE_TLS"}   a build without some optional CLUSTER_CONFIG
                                                  keys: `-routeCode MQTT_CLUSTER` leaves them
                                                  out and `-addRoute` rejects them as unknown
                                                  keys (line, column), as such a broker would:
                                                  doctor reads the offered keys from the
                                                  template, apply must not send the others.
=====================  =========================  ==============================================

Behaviour that matches the vendor's broker (CONNACK 4, `$SYS` refused to non-admins, the
placeholder form, `$SYS/Coreflux/Version`) is the same in every dialect: docs/lab-broker.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from lotdeploy.errors import LabError
from lotdeploy.protocol import CLUSTER_KEY_ORDER, REQUIRED_CLUSTER_KEYS

ReplyForm = Literal["json", "text"]
ReaddPolicy = Literal["reject", "overwrite"]

REPLY_FORMS: tuple[str, ...] = get_args(ReplyForm)
READD_POLICIES: tuple[str, ...] = get_args(ReaddPolicy)
#: Keys a dialect may lack: the documented optional ones (without a required key no route
#: could be added at all, so that is no broker worth emulating).
OMITTABLE_KEYS: tuple[str, ...] = tuple(
    k for k in CLUSTER_KEY_ORDER if k not in REQUIRED_CLUSTER_KEYS
)


@dataclass(frozen=True)
class Dialect:
    """One broker variant; see the module docstring for what each knob emulates."""

    replies: ReplyForm = "json"
    echo_request_id: bool = True
    readd: ReaddPolicy = "reject"
    route_code_missing: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.replies not in REPLY_FORMS:
            raise LabError(
                f"unknown reply form {self.replies!r} (choose from {_choices(REPLY_FORMS)})"
            )
        if self.readd not in READD_POLICIES:
            raise LabError(
                f"unknown re-add policy {self.readd!r} (choose from {_choices(READD_POLICIES)})"
            )
        object.__setattr__(self, "route_code_missing", frozenset(self.route_code_missing))
        for key in sorted(self.route_code_missing):
            if key not in OMITTABLE_KEYS:
                why = "it is required" if key in REQUIRED_CLUSTER_KEYS else "it is not offered"
                raise LabError(
                    f"CLUSTER_CONFIG key {key!r} cannot be left out ({why}; "
                    f"choose from {_choices(OMITTABLE_KEYS)})"
                )

    @property
    def echoes_request_id(self) -> bool:
        """Whether replies carry the id back: only JSON envelopes have a place for it."""
        return self.echo_request_id and self.replies == "json"

    @property
    def offered_keys(self) -> tuple[str, ...]:
        """The CLUSTER_CONFIG keys this broker accepts, in the order its template lists them."""
        return tuple(k for k in CLUSTER_KEY_ORDER if k not in self.route_code_missing)

    @property
    def label(self) -> str:
        """A short note of the emulated variant, e.g. `2.x-json` or `1.x-text+readd-overwrite`."""
        parts = ["2.x-json" if self.replies == "json" else "1.x-text"]
        if self.replies == "json" and not self.echo_request_id:
            parts.append("no-request-id")
        if self.readd == "overwrite":
            parts.append("readd-overwrite")
        parts += [f"without-{key}" for key in self.offered_missing]
        return "+".join(parts)

    @property
    def offered_missing(self) -> tuple[str, ...]:
        """The left-out keys in template order (stable for labels and messages)."""
        return tuple(k for k in CLUSTER_KEY_ORDER if k in self.route_code_missing)


#: Today's behaviour: a 2.x broker.
DIALECT_2X = Dialect()
#: A 1.x broker: plain-text replies, no requestId.
DIALECT_1X = Dialect(replies="text", echo_request_id=False)


def dialect_from_options(
    replies: str, echo_request_id: bool, readd: str, route_code_missing: str
) -> Dialect:
    """The Dialect the `lab broker` command line asks for; LabError naming the bad option.

    `route_code_missing` is a comma-separated list of CLUSTER_CONFIG keys ("" for none),
    case-insensitive, e.g. "USE_TLS,MESSAGE_VALIDITY_SEC".
    """
    form = replies.strip().lower()
    if form not in REPLY_FORMS:
        raise LabError(f"--replies must be one of {_choices(REPLY_FORMS)}, not {replies!r}")
    policy = readd.strip().lower()
    if policy not in READD_POLICIES:
        raise LabError(f"--readd must be one of {_choices(READD_POLICIES)}, not {readd!r}")
    keys = frozenset(k.strip().upper() for k in route_code_missing.split(",") if k.strip())
    for key in sorted(keys):
        if key not in OMITTABLE_KEYS:
            why = "a required key" if key in REQUIRED_CLUSTER_KEYS else "not an offered key"
            raise LabError(
                f"--route-code-missing: {key!r} is {why} (choose from {_choices(OMITTABLE_KEYS)})"
            )
    return Dialect(
        replies=cast(ReplyForm, form),  # checked against REPLY_FORMS above
        echo_request_id=echo_request_id,
        readd=cast(ReaddPolicy, policy),  # checked against READD_POLICIES above
        route_code_missing=keys,
    )


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values)
