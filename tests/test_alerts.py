"""The Prometheus alert rules and the Grafana dashboard shipped in deploy/.

The rules are checked and unit-tested with the real promtool; the dashboard's queries are
checked against the metric names a real agent serves on /metrics.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "egressgw-rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "egressgw-rules.test.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); CI installs it")
    return path


def run_promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rules_are_valid() -> None:
    result = run_promtool("check", "rules", RULES, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("original", "weakened"),
    [
        ("max_connection) > 0.8\n", "max_connection) > 0.9\n"),
        ("max_connection) > 0.95\n", "max_connection) > 0.99\n"),
        ("[5m])) > 0", "[5m])) > 5"),
        ("> 0.8\n        for: 5m\n", "> 0.8\n        for: 0m\n"),
    ],
    ids=["warning-threshold", "critical-threshold", "failure-threshold", "warning-duration"],
)
def test_rule_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, weakened: str) -> None:
    """The unit tests are sharp: changing a threshold or a duration makes them fail."""
    text = RULES.read_text()
    assert text.count(original) == 1, original
    (tmp_path / RULES.name).write_text(text.replace(original, weakened))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
