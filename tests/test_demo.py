"""`make demo` (saedb demo), the README's first command, on a smaller sample: every step runs,
says what it does, and the showcase steers gradually with papers of both topics halfway."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from saedb.cli import app


def test_the_demo_runs_end_to_end_and_shows_gradual_steering(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--db", str(tmp_path / "demo.duckdb"), "--limit", "2500"])
    assert result.exit_code == 0, result.output
    out = result.output
    for step in ("training a top-k SAE", "step 800/800", "labelling features offline", "shuffled label", "finding feature families",
                 "steering evaluation", "steering vs a naive rewrite"):
        assert step in out, step
    table = [tuple(float(v) for v in row) for row in
             re.findall(r"^\s+(\d\.\d\d)\s+(\d+)%\s+(\d+)%\s+(\d+)%$", out, flags=re.MULTILINE)]
    assert [row[0] for row in table] == [0.0, 0.2, 0.35, 0.5, 0.65, 0.8], out
    carry, near, both = ([row[i] for row in table] for i in (1, 2, 3))
    assert carry[-1] > carry[0] and near[0] == 100 and near[-1] < near[0]
    assert both[3] > 0, out  # halfway: papers of both topics
