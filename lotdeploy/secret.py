"""The one redaction mechanism: a value type that never prints itself.

Every password, private key and passphrase lives in a `Secret` from the moment it is read or
generated. `str()`, `repr()`, f-strings, logging and JSON encoding all show "(sensitive)";
only `reveal()` gives the value, and only code that writes it to its destination (a LOT file,
a secret store, a broker command) calls it. Text from outside (subprocess output, exception
messages) is passed through `scrub()`, which removes every secret value this process knows.
"""

from __future__ import annotations

import hmac
import json
import logging
import weakref
from typing import Any

SENSITIVE = "(sensitive)"
#: Shorter values would scrub innocent words from text; every secret lotdeploy generates is
#: longer, and new passphrases must be at least this long.
MIN_SCRUB_LENGTH = 8

_known: weakref.WeakSet[Secret] = weakref.WeakSet()


class Secret:
    """A sensitive string. Compare with ==, hash it, but print it and you get "(sensitive)"."""

    __slots__ = ("__value", "__weakref__")

    def __init__(self, value: str, *, public: bool = False) -> None:
        """`public`: a value everyone knows (the vendor's factory password): still never
        printed, but not scrubbed from other text (it would erase the word everywhere)."""
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self.__value = value
        if len(value) >= MIN_SCRUB_LENGTH and not public:
            _known.add(self)

    def reveal(self) -> str:
        return self.__value

    def __str__(self) -> str:
        return SENSITIVE

    def __repr__(self) -> str:
        return f"Secret({SENSITIVE!r})"

    def __format__(self, spec: str) -> str:
        return SENSITIVE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.__value.encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash(("Secret", self.__value))

    def __bool__(self) -> bool:
        return bool(self.__value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


def scrub(text: str) -> str:
    """Replace every known secret value occurring in `text` with "(sensitive)"."""
    if not _known:  # plan never opens the store: nothing to look for
        return text
    for secret in sorted(list(_known), key=lambda s: -len(s.reveal())):
        value = secret.reveal()
        if value and value in text:
            text = text.replace(value, SENSITIVE)
    return text


def jsonable(obj: Any) -> Any:
    """`json.dumps(default=jsonable)`: Secrets become "(sensitive)", paths become str."""
    if isinstance(obj, Secret):
        return SENSITIVE
    if hasattr(obj, "__fspath__"):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_ENCODER = json.JSONEncoder(default=jsonable)


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps that can never emit a Secret's value."""
    if not kwargs:  # the common case: one encoder for the process (C speed, no set-up)
        return scrub(_ENCODER.encode(obj))
    return scrub(json.dumps(obj, default=jsonable, **kwargs))


class ScrubFilter(logging.Filter):
    """Logging filter: formats the record, then scrubs it, so no handler sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True
