"""saedb as a user gets it: the wheel built from this tree (offline, no build isolation),
installed into a fresh venv, run from a directory outside the repository (issue 51: `saedb
postgres` failed on a module of the dev extra, `saedb demo` looked for its corpus inside
site-packages and left an empty database behind)."""

from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_wheel_does_what_the_readme_says(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, saedb = venv / "bin" / "python", venv / "bin" / "saedb"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *wheels.glob("saedb-*.whl")],
                   check=True, capture_output=True, timeout=300)
    # its dependencies: those of this environment, behind the fresh venv's own site-packages (no network here)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = lambda *args: subprocess.run([saedb, *args], cwd=outside, capture_output=True, text=True, timeout=300)  # noqa: E731

    where = subprocess.run([python, "-c", "import saedb.sqlfiles; print(saedb.sqlfiles.sql_dir())"], cwd=outside,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where  # the wheel's own copy of the SQL scripts
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("saedb "), version
    demo = run("demo", "--db", "demo.duckdb")
    assert demo.returncode == 2 and "no corpus at" in demo.stderr and "--corpus PATH" in demo.stderr, demo
    assert not (outside / "demo.duckdb").exists()
    missing = run("search", "disks", "--db", "typo.duckdb")
    assert missing.returncode == 2 and "no database at typo.duckdb" in missing.stderr, missing
    server = subprocess.Popen([saedb, "postgres", "--data", "pg"], cwd=outside, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # the line it prints once the server answers
        assert first.startswith("PostgreSQL is up: --db 'postgresql://"), (first, server.stderr.read() if server.poll() is not None else "")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(120) == 0
