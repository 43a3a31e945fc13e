"""Issue #6.4: schemathesis against the live server, from its own OpenAPI document, with and without a token.

Every schemathesis check but one runs (`--checks all`): no 5xx, every status code, content type,
header and body as documented, schema-valid bodies accepted and invalid ones refused, auth enforced,
deleted tasks gone, plus its stateful phase (create, then read, change, delete what was created).

FUZZ_EXAMPLES is schemathesis's `--max-examples`: generated cases per operation in its fuzzing
phase, on top of the deterministic cases of its coverage phase. The default, 10, gives about 1,200
cases over both runs in about 20 s; `FUZZ_EXAMPLES=100 pytest -m fuzz` is a longer hunt.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_user

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")


def fuzz_examples() -> int:
    return int(os.environ.get("FUZZ_EXAMPLES", "10"))


@pytest.mark.parametrize("with_token", [True, False], ids=["with-token", "without-token"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(server, with_token, tmp_path):
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(CONFIG),
               "run", f"{server.base_url}/schema/openapi.json",
               "--checks", "all", "--max-examples", str(fuzz_examples()), "--request-timeout", "30",
               # Every task has two paths, /api/tasks/{id} and /api/{user_id}/tasks/{id} (links inferred
               # from the Task body's `id` and `user_id`). The stateful phase sometimes deletes a task
               # through one and then flags "created resource not found" (ST302) on the other: a 404
               # that is right. The other checks, use_after_free among them, still run.
               "--exclude-checks", "ensure_resource_availability"]
    if with_token:
        command += ["--header", f"Authorization: Bearer {make_user('fuzz').token}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    output = result.stdout + result.stderr
    summary = output[output.rfind("SUMMARY"):] if "SUMMARY" in output else output[-3000:]
    print(summary)
    assert result.returncode == 0, output[-20000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated[1]) >= 100, summary
