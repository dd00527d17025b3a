"""`relay-impact report` as a scheduled job runs it: --since/--until, --fail-on, --quiet."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def _copy(cases_workdir, tmp_path):
    workdir = tmp_path / "out"
    shutil.copytree(cases_workdir, workdir)
    return workdir


def test_since_until_limit_the_report(cases_workdir, tmp_path):
    workdir = _copy(cases_workdir, tmp_path)
    result = runner.invoke(app, ["report", str(workdir), "--since", "2026-11-04", "--until", "2026-11-05"])
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "report" / "summary.json").read_text())
    assert summary["messages"] == 11
    assert summary["period"]["since"] == "2026-11-04T00:00:00+00:00"
    assert "1 message(s) without a time in their log are included" in (workdir / "report" / "report.html").read_text()


def test_bad_since_is_one_clear_line(cases_workdir, tmp_path):
    result = runner.invoke(app, ["report", str(_copy(cases_workdir, tmp_path)), "--since", "last week"])
    assert result.exit_code == 1
    assert "--since 'last week': expected a date (2026-11-01)" in result.output


def test_fail_on_exits_3_quietly(cases_workdir, tmp_path):
    workdir = _copy(cases_workdir, tmp_path)
    result = runner.invoke(app, ["report", str(workdir), "--fail-on", "newly_rejected", "--quiet", "--format", "json"])
    assert result.exit_code == 3
    assert result.output == ""
    result = runner.invoke(app, ["report", str(workdir), "--fail-on", "newly_rejected", "--since", "2026-12-01", "-q"])
    assert result.exit_code == 3  # the message without a time is kept and is newly rejected
    result = runner.invoke(app, ["report", str(workdir), "--fail-on", "possibly_rejected", "--since", "2026-12-01", "-q"])
    assert result.exit_code == 0
