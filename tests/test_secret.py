"""The one redaction mechanism: a Secret never shows its value except through reveal()."""

from __future__ import annotations

import json
import logging
import pickle

import pytest

from lotdeploy.errors import LotdeployError
from lotdeploy.lot.ast import Setting, Str
from lotdeploy.secret import SENSITIVE, ScrubFilter, Secret, dumps, scrub


def test_every_rendering_is_redacted() -> None:
    secret = Secret("hunter2hunter2")
    for shown in (
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % secret,
        "{}".format(secret),
        str([secret]),
        str({"p": secret}),
    ):
        assert "hunter2" not in shown
    assert SENSITIVE in str(secret)
    assert secret.reveal() == "hunter2hunter2"


def test_json_and_exceptions_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("hunter2hunter2")
    assert json.loads(dumps({"password": secret})) == {"password": SENSITIVE}
    assert "hunter2" not in str(LotdeployError(f"failed with {secret}"))
    logger = logging.getLogger("lotdeploy.test")
    logger.addFilter(ScrubFilter())
    with caplog.at_level(logging.INFO, logger="lotdeploy.test"):
        logger.info("leaked %s", secret.reveal())
    assert "hunter2" not in caplog.text and SENSITIVE in caplog.text


def test_scrub_removes_known_values_from_foreign_text() -> None:
    secret = Secret("zZ9-unique-value")
    assert scrub("ssh said: zZ9-unique-value rejected") == f"ssh said: {SENSITIVE} rejected"
    assert secret


def test_cannot_be_pickled_and_compares_by_value() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret("abcdef"))
    assert Secret("abcdef") == Secret("abcdef") and Secret("abcdef") != Secret("abcdeg")


def test_lot_setting_repr_hides_passwords() -> None:
    assert "pw-value" not in repr(Setting("PASSWORD", Str("pw-value")))
    assert "10.0.0.1" in repr(Setting("BROKER_ADDRESS", Str("10.0.0.1")))
