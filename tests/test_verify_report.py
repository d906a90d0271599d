"""The verify report in a real headless Chromium, and the pure parts of verify (result,
advice rule, terminal and Prometheus text) on results built as data.

Chromium runs with no network at all (`unshare --net`, as root), so "the page loads
offline" is a fact, not a hope; console messages come out on stderr (`--enable-logging=
stderr`) as `...:CONSOLE...` lines, and the page has no script, so any such line is an
error. A deliberately broken page proves the detector sees errors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from lotdeploy.verify.advice import advise, needed_validity, validity_advice
from lotdeploy.verify.output import matrix_lines, prometheus_text, terminal_text
from lotdeploy.verify.report import html_report
from lotdeploy.verify.result import Check, NodeInfo, VerifyResult


@dataclass
class Rendered:
    dom: str
    console: list[str]


def need_chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup does)")
    return found


def chromium_render(page: Path, timeout: float = 60) -> Rendered:
    """Load `page` in headless Chromium with no network; its DOM and console lines."""
    chromium = need_chromium()
    with tempfile.TemporaryDirectory(prefix="lotdeploy-chromium-") as profile:
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.resolve().as_uri(),
        ]
        if os.geteuid() == 0 and shutil.which("unshare"):
            argv = ["unshare", "--net", *argv]  # offline for real: no network namespace
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [
        line
        for line in proc.stderr.splitlines()
        if ":CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line
    ]
    return Rendered(proc.stdout, console)


def sample_result() -> VerifyResult:
    """A result as verify makes them: two regions, one node cut off."""
    nodes = {
        "eu1": NodeInfo("eu1", "eu", "198.18.0.11"),
        "eu2": NodeInfo("eu2", "eu", "198.18.0.12"),
        "us1": NodeInfo("us1", "us", "198.18.0.13"),
    }
    checks = []
    for name in ("eu1", "eu2"):
        checks += [
            Check(name, "ssh", "pass", "SSH ok"),
            Check(name, "release", "pass", "release abc"),
            Check(name, "tls", "pass", "verified", days_left=396),
            Check(name, "routes", "pass", "2 route(s)"),
        ]
    checks += [
        Check("us1", "ssh", "fail", "us1 is not reachable over SSH: Connection refused"),
        Check("us1", "release", "inconclusive", "not checked"),
    ]
    for a, b, latency in (("eu1", "eu2", 0.8), ("eu2", "eu1", 1.1)):
        checks.append(Check(f"{a} → {b}", "route", "pass", "Connected"))
        checks.append(
            Check(f"{a} → {b}", "link", "pass", "ok", latency, 5, 5, 0, 0, validity_sec=5)
        )
    for a, b in (("eu1", "us1"), ("eu2", "us1"), ("us1", "eu1"), ("us1", "eu2")):
        checks.append(Check(f"{a} → {b}", "link", "fail", f'<no> probe & {b} "down"'))
    result = VerifyResult(
        "lab",
        "20260101T000000-abcdef",
        "2026-01-01T00:00:00+00:00",
        2.5,
        nodes,
        ["eu1", "eu2", "us1"],
        checks,
        topic_prefix="lotdeploy/probe/",
        probes_per_link=5,
        timeout=5.0,
    )
    result.advice = validity_advice(result.checks, 5.0)
    return result


# -- Chromium ---------------------------------------------------------------------------------


def test_the_console_error_detector_catches_a_broken_page(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>notDefinedAnywhere();</script>"
        '<img src="https://example.invalid/x.png"></body></html>'
    )
    page = chromium_render(bad)
    assert any("notDefinedAnywhere" in line for line in page.console), page.console
    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><html><body><p id='fine'>fine</p></body></html>")
    page = chromium_render(good)
    assert page.console == [] and 'id="fine"' in page.dom


def test_the_report_renders_offline_with_every_node_and_failed_link(tmp_path: Path) -> None:
    result = sample_result()
    path = tmp_path / "report.html"
    path.write_text(html_report(result))
    html = path.read_text()
    # self-contained: nothing to fetch (the SVG namespace is a name, not a request)
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    page = chromium_render(path)
    assert page.console == [], page.console
    for name in result.nodes:
        assert f'data-node="{name}"' in page.dom
    for check in result.problems():
        assert f'data-subject="{check.subject}"' in page.dom
    assert "&lt;no&gt; probe &amp; us1" in page.dom  # escaped, not markup
    for pair in ("eu1 → us1", "us1 → eu2"):
        assert f'data-link="{pair}"' in page.dom
    assert "lotdeploy/probe/20260101T000000-abcdef/#" in page.dom  # run metadata


# -- pure parts ------------------------------------------------------------------------------


def test_the_validity_rule() -> None:
    assert needed_validity(0.0, 5.0) == 10
    assert needed_validity(80.0, 5.0) == 12  # 2 × (5 + 0.72)
    assert needed_validity(2000.0, 5.0) == 46
    assert advise("a", "b", 80.0, 120, 5.0) is None
    warned = advise("a", "b", 2000.0, 30, 5.0)
    assert (
        warned is not None
        and warned.needed_sec == 46
        and "raise it to at least 46" in (warned.message)
    )
    zero = advise("a", "b", 1.0, 0, 5.0)
    assert zero is not None and "only while connected" in zero.message


def test_result_blame_text_and_metrics() -> None:
    result = sample_result()
    assert not result.ok
    assert result.failed_nodes() == {"us1"}  # all its links failed, and its own checks
    assert result.latency() == {("eu1", "eu2"): 0.8, ("eu2", "eu1"): 1.1}
    assert [a.source for a in result.advice] == ["eu1", "eu2"]  # 5 s < 10 s needed
    again = VerifyResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()
    matrix = matrix_lines(result)
    assert matrix[2].startswith("eu  eu1") and matrix[4].startswith("us  us1")
    assert "FAIL" in matrix[4] and "0.8" in matrix[2]
    text = "\n".join(terminal_text(result))
    assert "Verify FAILED" in text and "us1 → eu2: link: fail:" in text
    metrics = prometheus_text(result)
    assert 'lotdeploy_verify_link_up{site="lab",source="eu1",target="us1",' in metrics
    assert re.search(r'link_up\{[^}]*source="eu1",target="eu2"[^}]*\} 1$', metrics, re.M)
    assert re.search(r'link_up\{[^}]*source="eu1",target="us1"[^}]*\} 0$', metrics, re.M)
    assert 'lotdeploy_verify_certificate_expiry_days{site="lab",node="eu1"} 396' in metrics
    assert 'lotdeploy_verify_success{site="lab"} 0' in metrics
