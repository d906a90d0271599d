"""Which Coreflux broker variant the lab broker plays: the knobs `lotdeploy doctor` detects.

lotdeploy's assumptions about a broker differ between broker generations and builds; doctor
asks a real broker which of them hold. So that doctor and apply can be tested against every
answer, the lab broker can play each variant. The default plays the vendor's broker as its
current documentation and tooling describe it (docs/coreflux-interface.md), and, where
builds differ, the variant lotdeploy must cope with (re-add refused, no cluster topics).

=====================  =========================  ==============================================
Knob                   Values (default first)     Emulates, and why it matters
=====================  =========================  ==============================================
`replies`              "json", "text"             2.x JSON envelopes / 1.x plain-text lines:
                                                  the client must fall back to reading text,
                                                  which carries no requestId and no `data`.
`echo_request_id`      True, False                a broker that strips a trailing `-requestId
                                                  <id>` and never echoes it: the client's
                                                  `request_ids="auto"` must match by order.
`readd`                "reject", "overwrite"      re-adding an existing route name fails with
                                                  "already exists" (2.14 builds) or replaces
                                                  the route (newer docs): apply removes first
                                                  unless doctor saw a replace.
`route_code_missing`   frozenset(), {"USE_TLS"}   a build without some optional CLUSTER_CONFIG
                                                  keys: the template leaves them out and
                                                  `-addRoute` rejects them.
`verbs`                "any", "exact"             verbs in any case and as `--kebab-case`
                                                  aliases (the vendor's documentation) / only
                                                  as spelled (`-listRoutes`; an older build,
                                                  ASSUMED): lotdeploy always sends the spelled
                                                  form, doctor reports which.
`cluster_topics`       "none", "seed",            no cluster monitoring topics / the cluster
                       "coreflux"                 page's `$SYS/broker/cluster/{status,nodes,
                                                  sync}` / the newer tooling's `$SYS/Coreflux/
                                                  Cluster/{Role,IsLeader,Leader,Term,Members,
                                                  Status}`; formats are the lab's reading.
`version_topic`        True, False                `$SYS/Coreflux/Version` published, or not
                                                  (older builds may not).
`bad_login_code`       4, 5                       CONNACK for a wrong password: 4 (observed on
                                                  the vendor's broker) or 5 (amqtt, and what
                                                  some brokers send).
`secret_store`         True, False                `-setSecret`/`-listSecrets` exist, or answer
                                                  `Unknown command` (an older build).
`rights`               "admin-only", "named"      only the admin commands / the vendor's named
                                                  user rights: `-changeUserSettings <user>
                                                  <Flag> <value>` and `-listUserGroups <user>`
                                                  exist (stored; `AllowedSystemConfiguration` grants
                                                  `$SYS` reads: docs/lab-broker.md).
`sys_readable`         False, True                `$SYS` refused to all but the admin (the
                                                  vendor's broker as observed) / readable by
                                                  every logged-in user: a broker whose rights
                                                  let non-admins read route code, and the
                                                  passwords in it (`lotdeploy audit` finds it).
=====================  =========================  ==============================================

Behaviour that matches the vendor's broker (`$SYS` refused to non-admins, the placeholder
form, status at once to a new subscriber, quotes stripped) is the same in every dialect:
docs/lab-broker.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from lotdeploy.errors import LabError
from lotdeploy.protocol import CLUSTER_KEY_ORDER, REQUIRED_CLUSTER_KEYS

ReplyForm = Literal["json", "text"]
ReaddPolicy = Literal["reject", "overwrite"]
VerbCase = Literal["any", "exact"]
ClusterTopicScheme = Literal["none", "seed", "coreflux"]
RightsModel = Literal["admin-only", "named"]

REPLY_FORMS: tuple[str, ...] = get_args(ReplyForm)
READD_POLICIES: tuple[str, ...] = get_args(ReaddPolicy)
VERB_CASES: tuple[str, ...] = get_args(VerbCase)
CLUSTER_TOPIC_SCHEMES: tuple[str, ...] = get_args(ClusterTopicScheme)
RIGHTS_MODELS: tuple[str, ...] = get_args(RightsModel)
#: CONNACK return codes a wrong password may get: 4 bad user name or password, 5 not authorised.
BAD_LOGIN_CODES = (4, 5)
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
    verbs: VerbCase = "any"
    cluster_topics: ClusterTopicScheme = "none"
    version_topic: bool = True
    bad_login_code: int = 4
    secret_store: bool = True
    rights: RightsModel = "admin-only"
    sys_readable: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("verb case", self.verbs, VERB_CASES),
            ("cluster topic scheme", self.cluster_topics, CLUSTER_TOPIC_SCHEMES),
            ("rights model", self.rights, RIGHTS_MODELS),
        ):
            if value not in choices:
                raise LabError(f"unknown {name} {value!r} (choose from {_choices(choices)})")
        if self.bad_login_code not in BAD_LOGIN_CODES:
            raise LabError(f"bad login CONNACK code must be 4 or 5, not {self.bad_login_code!r}")
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
        if self.verbs == "exact":
            parts.append("exact-verbs")
        if self.cluster_topics != "none":
            parts.append(f"cluster-{self.cluster_topics}")
        if not self.version_topic:
            parts.append("no-version")
        if self.bad_login_code != 4:
            parts.append(f"connack-{self.bad_login_code}")
        if not self.secret_store:
            parts.append("no-secrets")
        if self.rights != "admin-only":
            parts.append(f"{self.rights}-rights")
        if self.sys_readable:
            parts.append("sys-open")
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
    replies: str,
    echo_request_id: bool,
    readd: str,
    route_code_missing: str,
    *,
    verbs: str = "any",
    cluster_topics: str = "none",
    version_topic: bool = True,
    bad_login_code: int = 4,
    secret_store: bool = True,
    rights: str = "admin-only",
    sys_readable: bool = False,
) -> Dialect:
    """The Dialect the `lab broker` command line asks for; LabError naming the bad option.

    `route_code_missing` is a comma-separated list of CLUSTER_CONFIG keys ("" for none),
    case-insensitive, e.g. "USE_TLS,MESSAGE_VALIDITY_SEC".
    """
    for option, value, choices in (
        ("--verbs", verbs, VERB_CASES),
        ("--cluster-topics", cluster_topics, CLUSTER_TOPIC_SCHEMES),
        ("--rights", rights, RIGHTS_MODELS),
    ):
        if value not in choices:
            raise LabError(f"{option} must be one of {_choices(choices)}, not {value!r}")
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
        verbs=cast(VerbCase, verbs),
        cluster_topics=cast(ClusterTopicScheme, cluster_topics),
        version_topic=version_topic,
        bad_login_code=bad_login_code,
        secret_store=secret_store,
        rights=cast(RightsModel, rights),
        sys_readable=sys_readable,
    )


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values)
