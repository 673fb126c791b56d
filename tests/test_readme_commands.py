"""The command-line sequence of docs/cli.md, each command as written, at a scale that fits the
suite, and the README's tour, whose commands are taken from that sequence.

Only sizes change (the sequence at full size ran here once, ~50 min: docs/cli.md). Changes, all
of scale or of what this machine has:
- loads take their first 1,500 papers (`--limit 1500`; the README's first line: 20,000);
- train and grid: small k and n, 200 / 30 steps (the README: k=64 n=6144 at 13,300 steps);
- the Postgres DSN is the test server's; `--llm` talks to a scripted OpenAI-compatible server
  on loopback (no network);
- `--llm` labels 20 features, not 200;
- eval: the first 5 of the README's queries, the small grid and the second-embedder judge
  (`--grid small --judge embedder:minilm`): the first 1,500 papers of hh_astro are filed only
  under 'astro-ph', so no feature predicts a subcategory there.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saedb.cli import app
from tests.scripted_chat import serving
from tests.test_analysis import FakeChatAPI

ROOT = Path(__file__).resolve().parent.parent
SCALE = [  # (pattern, replacement) on the command's text
    (r"--limit 20000", "--limit 1500"),
    (r"(saedb load \S+hh_ml\S+)", r"\1 --limit 1500"),
    (r"--k 64 --n 6144", "--k 8 --n 256 --steps 200 --batch-size 64 --lr 1e-3"),
    (r"--k 16,32 --n 256,512,1024,2048", "--k 4,8 --n 32,64 --steps 30 --batch-size 64"),
    (r"--llm gpt-4o-mini --limit 200", "--llm gpt-4o-mini --limit 20"),
    (r"--queries bench/queries/hh_astro.txt", "--queries first-queries.txt"),
    (r"--category-precision 0.5", "--category-precision 0.5 --grid small --judge embedder:minilm"),
]


def commands_after(path: Path, marker: str) -> list[str]:
    """The commands of the first ```sh block after ``marker`` in ``path`` (comments dropped)."""
    text = path.read_text()
    block = re.search(re.escape(marker) + r".*?```sh\n(.*?)```", text, flags=re.DOTALL).group(1)
    return [shlex.join(shlex.split(line, comments=True)) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def documented_commands() -> list[str]:
    return commands_after(ROOT / "docs" / "cli.md", "# The command line")


def test_the_readme_tour_commands_are_from_the_documented_sequence() -> None:
    """The README's tour shows part of docs/cli.md's sequence, so the test below runs them too."""
    tour = commands_after(ROOT / "README.md", "**3. The command line**")
    assert len(tour) >= 5 and set(tour) <= set(documented_commands())


def test_every_command_of_the_documented_sequence_runs(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")  # ../shared/data as in the README
    (work / "bench").symlink_to(ROOT / "bench")
    (work / "first-queries.txt").write_text("".join((ROOT / "bench" / "queries" / "hh_astro.txt").read_text().splitlines(True)[:5]))
    monkeypatch.chdir(work)
    monkeypatch.delenv("SAEDB_DB", raising=False)
    commands = documented_commands()
    assert len(commands) == 15 and all(c.startswith("saedb ") for c in commands)
    with serving(FakeChatAPI) as chat:
        monkeypatch.setenv("OPENAI_BASE_URL", chat)
        for command in commands:
            for pattern, replacement in SCALE:
                command = re.sub(pattern, replacement, command)
            command = command.replace("postgresql://saedb:saedb@localhost:5432/saedb", pg_dsn)
            result = CliRunner().invoke(app, shlex.split(command)[1:])
            assert result.exit_code == 0, f"{command}\n{result.output}"
    assert (work / "saedb.duckdb").is_file() and (work / "out" / "astro-sae" / "sae_weights.safetensors").is_file()
    assert (work / "scaling").is_dir()


@pytest.mark.parametrize("target", ["demo", "test", "figures", "bench", "bench-search", "bench-cluster"])
def test_the_makefile_parses_and_plans_each_target(target: str) -> None:
    """`make test` is CI's entry point: a Makefile make cannot read (or with a target defined
    twice) fails CI before any test runs."""
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "warning" not in plan.stderr.lower(), plan.stderr
