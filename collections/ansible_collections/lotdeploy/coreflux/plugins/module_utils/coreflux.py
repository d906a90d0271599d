# -*- coding: utf-8 -*-
# Copyright: lotdeploy authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The Coreflux broker's command channel, for the lotdeploy.coreflux modules.

Self-contained on purpose: a module runs on a node (or an execution environment) where
lotdeploy is not installed, so the wire facts lotdeploy keeps in `lotdeploy/protocol.py`
are restated here (tests/test_collection.py checks that both agree):

* a command is a plain-text publish (QoS 1) on `$SYS/Coreflux/Command`: `-<verb> <arg>`,
  LOT text raw after `-addRoute`; a trailing `-requestId <id>` is echoed by current builds
  (UNKNOWN on 1.x builds: `request_ids: auto` asks the broker once and sends ids only when
  they come back);
* replies come on the shared `$SYS/Coreflux/Command/Output` (subscribed before the first
  publish): a JSON envelope `{success, command, requestId, message, data, errors}` on 2.x
  builds, a plain-text line on 1.x builds; a reply is ours by its requestId, else by the
  command it names (PascalCase verb), else (1.x text, which names none) the first one;
* `-removeAllRoutes` is never sent; re-adding an existing route differs by build, so a
  change removes the route first unless told the broker replaces in place.

The MQTT client is paho-mqtt (pure Python, declared in the collection's requirements.txt).
On a node without it, `mqtt_library` names a directory or zip that holds the `paho`
package (lotdeploy's export copies one there); it is put on the import path only then.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import ssl
import sys
import threading
import time
import uuid

try:
    import queue
except ImportError:  # pragma: no cover - Python 2 is not supported
    queue = None

COMMAND_TOPIC = "$SYS/Coreflux/Command"
OUTPUT_TOPIC = "$SYS/Coreflux/Command/Output"
ROUTES_TOPIC = "$SYS/Coreflux/Routes"
ROUTE_TYPE = "MQTT_CLUSTER"
FORBIDDEN_VERBS = ("removeallroutes",)
REPLY_TIMEOUT = 15.0
OWNED_PREFIX = "lotdeploy_"
ROUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MASK = "********"

#: The arguments every module of the collection takes to reach a broker's command channel.
CONNECTION_ARGS = dict(
    admin_host=dict(type="str", default="127.0.0.1"),
    admin_port=dict(type="int", default=1883),
    admin_user=dict(type="str", default="root"),
    admin_password=dict(type="str", required=True, no_log=True),
    admin_tls=dict(type="bool", default=False),
    admin_ca_file=dict(type="path"),
    timeout=dict(type="float", default=REPLY_TIMEOUT),
    request_ids=dict(type="str", default="auto", choices=["auto", "always", "never"]),
    mqtt_library=dict(type="path"),
)


class ChannelError(Exception):
    """The broker could not be reached or did not answer; the message says which."""


class CommandFailed(ChannelError):
    """The broker answered, and the answer was a failure."""

    def __init__(self, verb, reply):
        self.reply = reply
        ChannelError.__init__(self, "-%s failed: %s" % (verb, describe(reply) or "no message"))


# ---------------------------------------------------------------------------------------------
# paho, found where the module's argument says when the node's Python lacks it
# ---------------------------------------------------------------------------------------------


def load_paho(library=None):
    """The paho.mqtt.client module, or ChannelError saying how to provide it."""
    try:
        import paho.mqtt.client as mqtt  # pylint: disable=import-outside-toplevel

        return mqtt
    except ImportError:
        pass
    if library:
        if not os.path.exists(library):
            raise ChannelError("mqtt_library %s does not exist on this host" % library)
        if library not in sys.path:
            sys.path.insert(0, library)
        try:
            import paho.mqtt.client as mqtt  # pylint: disable=import-outside-toplevel

            return mqtt
        except ImportError as exc:
            raise ChannelError("mqtt_library %s holds no usable paho-mqtt: %s" % (library, exc))
    raise ChannelError(
        "paho-mqtt is not installed for %s: install it (pip install 'paho-mqtt>=2.1,<3') or "
        "set mqtt_library to a directory or zip holding it (lotdeploy's export ships one)"
        % sys.executable
    )


# ---------------------------------------------------------------------------------------------
# Values: what may travel inside a LOT string or as one word of a command
# ---------------------------------------------------------------------------------------------


def value_problem(value, word=False):
    """Why `value` cannot be written in a LOT string (or, `word`, as one command word), or
    None. The same rule as lotdeploy's `values.problem`: no quote, line break, control
    character, comment marker or leading dash (LOT has no escape; a dash reads as an option).
    The reason never contains the value."""
    if value is None or value == "":
        return "is empty"
    if any(not c.isprintable() for c in value):
        return "contains a line break, control or invisible character"
    if '"' in value:
        return "contains a double quote (LOT has no escape for it)"
    if "'" in value:
        return "contains a single quote"
    if "//" in value:
        return "contains // (a comment marker)"
    if value.startswith("-") or re.search(r"\s-", value):
        return "has a word starting with - (would read as a command option)"
    if value in ("true", "false"):
        return 'is "true" or "false", which LOT reads as a boolean'
    if word and " " in value:
        return "contains a space (it must be one word on a broker command line)"
    return None


def check_route_name(name, owned_prefix=OWNED_PREFIX):
    """ChannelError unless `name` is a safe route name lotdeploy owns."""
    if not ROUTE_NAME.match(name or ""):
        raise ChannelError("route name %r must match ^[A-Za-z][A-Za-z0-9_]{0,63}$" % name)
    if owned_prefix and not name.startswith(owned_prefix):
        raise ChannelError(
            "refusing to touch route %s: only routes named %s* are managed (owned_prefix)"
            % (name, owned_prefix)
        )


def route_text(
    name, address, port, client_id, username=None, password=None, validity=None, use_tls=False
):
    """The route in the vendor's canonical layout, exactly as lotdeploy emits it
    (`compiler.routes.canonical_route_text`): documented keys in order, integers
    single-quoted, `USE_TLS true` only when on. ChannelError for a value LOT cannot hold."""
    for label, value in (
        ("broker_address", address),
        ("client_id", client_id),
        ("username", username),
        ("password", password),
    ):
        if value is None and label in ("username", "password"):
            continue
        why = value_problem(value)
        if why:
            raise ChannelError("%s %s" % (label, why))
    lines = [
        "DEFINE ROUTE %s WITH TYPE %s" % (name, ROUTE_TYPE),
        "    ADD CLUSTER_CONFIG",
        '        WITH BROKER_ADDRESS "%s"' % address,
        "        WITH BROKER_PORT '%d'" % int(port),
        '        WITH CLIENT_ID "%s"' % client_id,
    ]
    if username is not None:
        lines.append('        WITH USERNAME "%s"' % username)
    if password is not None:
        lines.append('        WITH PASSWORD "%s"' % password)
    if validity is not None:
        lines.append("        WITH MESSAGE_VALIDITY_SEC '%d'" % int(validity))
    if use_tls:
        lines.append("        WITH USE_TLS true")
    return "\n".join(lines)


_PASSWORD_LINE = re.compile(r'^(\s*WITH\s+PASSWORD\s+)(".*"|\S.*)$')


def normalise(code):
    """Route code as compared: comments and blank lines dropped, lines trimmed (the broker
    republishes code in its own layout; compare meaning, never bytes)."""
    out = []
    for line in (code or "").replace("\r\n", "\n").split("\n"):
        if "//" in line:
            line = _strip_comment(line)
        line = line.strip()
        if line:
            out.append(re.sub(r"\s+", " ", line))
    return "\n".join(out)


def _strip_comment(line):
    quoted = None
    for index, char in enumerate(line):
        if quoted:
            if char == quoted:
                quoted = None
        elif char in "\"'":
            quoted = char
        elif line.startswith("//", index):
            return line[:index]
    return line


def split_password(code):
    """(normalised code with the PASSWORD value masked, the password as written or None)."""
    found = None
    lines = []
    for line in normalise(code).split("\n"):
        match = _PASSWORD_LINE.match(line)
        if match:
            found = match.group(2).strip()
            if found.startswith('"') and found.endswith('"') and len(found) >= 2:
                found = found[1:-1]
            line = match.group(1) + '"' + MASK + '"'
        lines.append(line)
    return "\n".join(lines), found


def masked(code):
    return split_password(code)[0]


# ---------------------------------------------------------------------------------------------
# Replies (docs/coreflux-interface.md §2): the 2.x envelope, else a 1.x text line
# ---------------------------------------------------------------------------------------------

_TEXT_POSITION = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_TEXT_FAILURE = re.compile(
    r"error|not found|denied|unknown command|failed|already exists|invalid|not allowed|cannot",
    re.IGNORECASE,
)


def pascal(verb):
    verb = verb.lstrip("-")
    return verb[:1].upper() + verb[1:]


def verb_key(word):
    return word.lstrip("-").replace("-", "").lower()


def parse_reply(payload, verb):
    """One Output payload as a dict {success, command, request_id, message, data, errors}."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    doc = None
    try:
        doc = json.loads(payload)
    except ValueError:
        pass
    if isinstance(doc, dict) and "success" in doc:
        errors = []
        items = doc.get("errors") or []
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                errors.append(
                    {
                        "message": str(item.get("message", "")),
                        "line": item.get("line"),
                        "column": item.get("column"),
                    }
                )
            else:
                errors.append({"message": str(item), "line": None, "column": None})
        rid = doc.get("requestId")
        return {
            "success": bool(doc.get("success")),
            "command": str(doc.get("command") or pascal(verb)),
            "request_id": str(rid) if rid is not None else None,
            "message": str(doc.get("message") or ""),
            "data": doc.get("data"),
            "errors": errors,
            "named": bool(doc.get("command")),
        }
    text = payload.strip()
    errors = []
    match = _TEXT_POSITION.search(text)
    if text.lower().startswith("parsing error") or match:
        errors.append(
            {
                "message": text,
                "line": int(match.group(1)) if match else None,
                "column": int(match.group(2)) if match else None,
            }
        )
    success = not errors and ("successfully" in text.lower() or not _TEXT_FAILURE.search(text))
    if not success and not errors:
        errors.append({"message": text, "line": None, "column": None})
    return {
        "success": success,
        "command": pascal(verb),
        "request_id": None,
        "message": text,
        "data": None,
        "errors": errors,
        "named": False,
    }


def describe(reply):
    parts = [reply.get("message") or ""]
    for error in reply.get("errors") or []:
        where = ""
        if error.get("line") is not None:
            where = "%s:%s: " % (error.get("line"), error.get("column"))
        text = where + str(error.get("message") or "")
        if text != parts[0]:
            parts.append(text)
    return "; ".join(p for p in parts if p)


def is_reply_to(reply, verb, rid):
    """Ours by requestId when it carries one; otherwise by the command it names (another
    admin's `-listRoutes` answer is not our `-addRoute`'s); a 1.x line names none."""
    if reply["request_id"] is not None:
        return rid is None or reply["request_id"] == rid
    if not reply.get("named"):
        return True
    return verb_key(reply["command"]) in (verb_key(verb), "unknown", "")


def routes_of(reply):
    """The routes a `-listRoutes` reply lists: a 2.x data list, or a 1.x text message."""
    data = reply.get("data")
    if isinstance(data, dict) and isinstance(data.get("routes"), list):
        data = data["routes"]
    if data is None and reply.get("message"):
        _head, colon, names = reply["message"].rpartition(": ")
        data = [
            {"name": n.strip()}
            for n in names.split(",")
            if colon and re.match(r"^[A-Za-z]\w*$", n.strip())
        ]
    if not isinstance(data, list):
        return []
    return [item for item in data if isinstance(item, dict)]


# ---------------------------------------------------------------------------------------------
# MQTT through paho: one connection, bounded waits
# ---------------------------------------------------------------------------------------------


def tls_context(ca_file=None):
    context = (
        ssl.create_default_context(cafile=ca_file) if ca_file else (ssl.create_default_context())
    )
    return context


class Connection:
    """One MQTT 3.1.1 connection through paho's network thread, every wait bounded."""

    def __init__(
        self,
        mqtt,
        host,
        port,
        username,
        password,
        tls=False,
        ca_file=None,
        timeout=10.0,
        client_id=None,
    ):
        self.mqtt = mqtt
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.messages = queue.Queue(maxsize=100000)
        self._connected = threading.Event()
        self._acks = {}  # SUBACK return codes by packet id (the ack may beat our bookkeeping)
        self._acked = threading.Condition()
        self.refused = None
        cid = client_id or "lotdeploy-ansible-%s" % uuid.uuid4().hex[:12]
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set_context(tls_context(ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self.refused = str(reason_code)
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        try:
            self.messages.put_nowait((msg.topic, msg.payload, time.monotonic()))
        except queue.Full:
            pass

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        with self._acked:
            self._acks[mid] = [int(getattr(c, "value", c)) for c in reason_codes]
            self._acked.notify_all()

    def connect(self):
        """Connect and wait for CONNACK; ChannelError on refusal or silence."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise ChannelError("cannot connect to %s:%s: %s" % (self.host, self.port, exc))
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise ChannelError(
                "no CONNACK from %s:%s within %gs" % (self.host, self.port, self.timeout)
            )
        if self.refused is not None:
            self.close()
            raise ChannelError("%s:%s refused the login: %s" % (self.host, self.port, self.refused))
        return self

    def subscribe(self, topics):
        """Subscribe (QoS 1) and wait for SUBACK; ChannelError when refused."""
        result, mid = self.client.subscribe([(t, 1) for t in topics])
        with self._acked:
            self._acked.wait_for(lambda: mid in self._acks, self.timeout)
            codes = self._acks.pop(mid, None)
        if result != 0 or codes is None:
            raise ChannelError("no SUBACK from %s:%s for %s" % (self.host, self.port, topics))
        if any(code >= 0x80 for code in codes):
            raise ChannelError(
                "%s:%s refused the subscription to %s" % (self.host, self.port, ", ".join(topics))
            )

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise ChannelError(
                "%s:%s did not acknowledge a publish within %gs"
                % (self.host, self.port, self.timeout)
            )

    def close(self):
        try:
            self.client.disconnect()
        except Exception:  # pylint: disable=broad-except
            pass
        self.client.loop_stop()


def login_accepted(mqtt, host, port, username, password, tls=False, ca_file=None, timeout=10.0):
    """Whether the broker accepts `username`/`password` (CONNECT, then DISCONNECT): how a
    cluster user is checked where no command lists users. A refusal is False; anything else
    that stops a login (no answer, no route to the host) is ChannelError."""
    conn = Connection(mqtt, host, port, username, password, tls, ca_file, timeout)
    try:
        conn.connect()
    except ChannelError as exc:
        if conn.refused is not None:
            return False
        raise exc
    conn.close()
    return True


class CommandChannel:
    """An admin session on one broker's command channel (commands one at a time)."""

    def __init__(self, params):
        self.mqtt = load_paho(params.get("mqtt_library"))
        self.timeout = float(params.get("timeout") or REPLY_TIMEOUT)
        self.params = params
        self.request_ids = params.get("request_ids", "auto")
        self.conn = Connection(
            self.mqtt,
            params["admin_host"],
            params["admin_port"],
            params["admin_user"],
            params["admin_password"],
            params.get("admin_tls"),
            params.get("admin_ca_file"),
            self.timeout,
        )
        self.commands = []  # the verbs sent (never their arguments), for the module's result

    def __enter__(self):
        self.conn.connect()
        try:
            self.conn.subscribe([OUTPUT_TOPIC])
            if self.request_ids == "auto":
                self.request_ids = "always"
                reply = self.command("listRoutes")
                self.request_ids = "always" if reply["request_id"] is not None else "never"
                self.last_listing = reply
        except Exception:
            self.conn.close()
            raise
        return self

    def __exit__(self, *exc):
        self.conn.close()

    def command(self, verb, argument=""):
        """Send `-verb argument` and return the matching reply (a failure answer too)."""
        if verb_key(verb) in FORBIDDEN_VERBS:
            raise ChannelError("-%s is never sent: it removes routes lotdeploy does not own" % verb)
        while True:  # stale replies (another admin's, a timed-out call's)
            try:
                self.conn.messages.get_nowait()
            except queue.Empty:
                break
        rid = uuid.uuid4().hex if self.request_ids == "always" else None
        text = "-" + verb + (" " + argument if argument else "")
        if rid:
            text += " -requestId " + rid
        self.commands.append(verb)
        self.conn.publish(COMMAND_TOPIC, text.encode("utf-8"), qos=1)
        deadline = time.monotonic() + self.timeout
        for _dummy in range(100000):  # bounded in count as well as in time
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                topic, payload, _at = self.conn.messages.get(timeout=remaining)
            except queue.Empty:
                break
            if topic != OUTPUT_TOPIC:
                continue
            reply = parse_reply(payload, verb)
            if is_reply_to(reply, verb, rid):
                return reply
        raise ChannelError(
            "no reply to -%s within %gs (a broker drops commands of a user without the right "
            "to send them)" % (verb, self.timeout)
        )

    def checked(self, verb, argument=""):
        reply = self.command(verb, argument)
        if not reply["success"]:
            raise CommandFailed(verb, reply)
        return reply

    def list_routes(self):
        reply = self.checked("listRoutes")
        self.last_listing = reply
        return routes_of(reply)

    def add_route(self, text):
        return self.checked("addRoute", text)

    def remove_route(self, name):
        """Remove; "not found" counts as done (what the vendor's editor does). Whether the
        route was there: True, False when the broker said not found."""
        reply = self.command("removeRoute", name)
        if reply["success"]:
            return True
        if "not found" in describe(reply).lower():
            return False
        raise CommandFailed("removeRoute", reply)

    def check_route_connection(self, name):
        reply = self.checked("checkRouteConnection", name)
        return reply["data"] if isinstance(reply["data"], dict) else {"message": reply["message"]}

    def add_user(self, name, password):
        return self.command("addUser", "%s %s" % (_word(name), _word(password)))

    def change_user_password(self, name, password):
        return self.checked("changeUserPassword", "%s %s" % (_word(name), _word(password)))

    def remove_user(self, name):
        return self.command("removeUser", _word(name))

    def read_topics(self, topics, wait):
        """The first payload on each topic within `wait` seconds (retained snapshots; the
        first delivery may lack the retain flag, so it is not filtered on)."""
        found = {}
        if not topics:
            return found
        self.conn.subscribe(list(topics))
        deadline = time.monotonic() + wait
        for _dummy in range(100000):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(found) == len(topics):
                break
            try:
                topic, payload, _at = self.conn.messages.get(timeout=remaining)
            except queue.Empty:
                break
            if topic in topics and topic not in found:
                found[topic] = payload.decode("utf-8", "replace")
        try:
            self.conn.client.unsubscribe(list(topics))
        except Exception:  # pylint: disable=broad-except
            pass
        return found

    def route_codes(self, names, wait=5.0):
        """Each route's LOT as the broker republishes it on `$SYS/Coreflux/Routes/<name>`
        (None for a route whose code did not come within `wait`)."""
        topics = dict(("%s/%s" % (ROUTES_TOPIC, n), n) for n in names)
        got = self.read_topics(list(topics), wait)
        return dict((name, got.get(topic)) for topic, name in topics.items())

    def login_accepted(self, username, password, host=None, port=None, tls=None, ca_file=None):
        p = self.params
        return login_accepted(
            self.mqtt,
            host or p["admin_host"],
            port or p["admin_port"],
            username,
            password,
            p.get("admin_tls") if tls is None else tls,
            p.get("admin_ca_file") if ca_file is None else ca_file,
            self.timeout,
        )


def _word(value):
    why = value_problem(value, word=True)
    if why:
        raise ChannelError("a user name or password %s" % why)
    return value
