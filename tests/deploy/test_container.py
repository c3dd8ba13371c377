"""deploy/Dockerfile and deploy/compose.yaml. No image is built or pulled here (CI cannot):
the compose file is validated against the Compose specification and checked for the
shape docs/operations.md promises, and the Dockerfile's one install step is the script
tests/test_wheel.py runs for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_compose_file_is_valid_compose():
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    if not os.access(tool, os.X_OK):
        message = "check-jsonschema is not installed (the test extras install it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_postgres_s3_two_nodes_and_a_worker():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "s3", "migrate", "api-a", "api-b", "worker"} <= set(services)
    vault_services = {name: svc for name, svc in services.items() if svc.get("image") == "clinical-photo-vault:local"}
    assert set(vault_services) == {"migrate", "api-a", "api-b", "worker"}
    readme = (ROOT / "README.md").read_text()
    for name, svc in vault_services.items():
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert svc["ulimits"]["core"] == 0 and "no-new-privileges:true" in svc["security_opt"], name
        env = svc["environment"]
        assert env["VAULT_DATABASE_URL"].startswith("postgresql+asyncpg://") and env["VAULT_STORAGE_URL"].startswith("s3://")
        assert env["VAULT_INPROCESS_JOBS"] == "false"
        undocumented = [key for key in env if key.startswith("VAULT_") and f"`{key}`" not in readme]
        assert not undocumented, undocumented
        if name != "migrate":
            assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert vault_services["api-a"]["command"][0] == vault_services["api-b"]["command"][0] == "serve"
    assert vault_services["worker"]["command"] == ["worker"]


def test_dockerfile_is_multi_stage_non_root_and_installs_with_the_tested_script():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    assert " AS build" in build.splitlines()[0]
    installs = [line for line in build.splitlines() if "pip" in line or "install-wheel" in line]
    assert installs == ["RUN deploy/install-wheel.sh /opt/vault /usr/local/bin/python3.11"], installs
    assert "COPY --from=build /opt/vault /opt/vault" in runtime
    assert not re.search(r"build-essential|gcc|g\+\+|clang|apt-get install", runtime), "no compiler in the runtime image"
    user = re.findall(r"(?m)^USER (\S+)", runtime)
    assert user and not user[-1].startswith(("root", "0")), user
    script = DEPLOY / "install-wheel.sh"
    assert os.access(script, os.X_OK)
    assert (DEPLOY / "Dockerfile.dockerignore").read_text().count(".venv") == 1
