"""Issue #14.6: compose.yaml and the Dockerfile keep what a deployment relies on.

There is no Docker engine on the machines that run this suite, so these tests read the files: one
image built once, no default password, the API published on the loopback unless told otherwise,
restart policies, a health check on /ready, CORS off by default. (`docker compose config` itself was
run by hand, issue #14's closing note.)
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import yaml

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
# ${NAME:?message}: compose refuses to start without NAME. ${NAME:-default}: a default.
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


def test_the_image_is_built_once_and_shared():
    built = [name for name, service in SERVICES.items() if "build" in service]
    assert built == ["migrate"]
    image = SERVICES["migrate"]["image"]
    assert SERVICES["api"]["image"] == image
    assert SERVICES["api"].get("pull_policy") == "never"


def test_no_password_or_secret_has_a_default():
    for name, service in SERVICES.items():
        for variable, value in service.get("environment", {}).items():
            text = str(value)
            if "PASSWORD" in variable or variable in ("JWT_SECRET", "PGPASSWORD"):
                if variable == "TASKAPI_AUDITOR_PASSWORD":  # optional: unset, the role has no password
                    assert text == "${TASKAPI_AUDITOR_PASSWORD:-}", (name, variable)
                else:
                    assert REQUIRED.match(text), (name, variable, text)
            assert "change-me" not in text and ":-postgres" not in text, (name, variable)
            if variable.startswith("DATABASE_"):
                # The password travels as PGPASSWORD: inside a URL, an `@` or `/` in it would break the DSN.
                assert urlsplit(text).password is None, (name, variable)
                assert REQUIRED.match(str(service["environment"]["PGPASSWORD"])), name


def test_the_api_is_published_on_the_loopback_by_default():
    (published,) = SERVICES["api"]["ports"]
    assert published == "${TASKAPI_PUBLISH:-127.0.0.1:8000}:8000"
    assert all("ports" not in service for name, service in SERVICES.items() if name != "api")


def test_long_running_services_restart_and_the_one_shot_does_not():
    assert SERVICES["db"]["restart"] == "unless-stopped"
    assert SERVICES["api"]["restart"] == "unless-stopped"
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_health_checks_ask_for_ready_not_health():
    check = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/ready" in check and "/health" not in check
    dockerfile = (ROOT / "Dockerfile").read_text()
    (line,) = [line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK")]
    assert "/ready" in line and "/health" not in line
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}


def test_cors_is_off_unless_asked_for():
    assert SERVICES["api"]["environment"]["CORS_ORIGINS"] == "${CORS_ORIGINS:-}"
