"""deploy/prometheus and deploy/grafana: the alert rules pass ``promtool check rules`` and
fire on the series they are about (``promtool test rules``); the dashboard is valid JSON
whose every query names a series (tests/http/test_metrics.py checks those names exist)."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import yaml

from tests.deploy.tools import need
from tests.support.metrics import referenced_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "vault.rules.yml"


def test_promtool_checks_the_rules():
    promtool = need("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _expect(alert: str, **labels: str) -> str:
    """One alert_rule_test entry: promtool compares annotations too, so expand the rule's
    ``{{ $labels.x }}`` templates here."""
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if r.get("alert") == alert)
    annotations = {key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], value)
                   for key, value in rule.get("annotations", {}).items()}
    return json.dumps({"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations})


def test_rules_fire_on_their_series(tmp_path):
    promtool = need("promtool")
    day = 86400
    tests = textwrap.dedent(f"""
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'vault_workers_live{{instance="a"}}'
                values: '0x20'
              - series: 'vault_jobs_dead{{instance="a", kind="lifecycle.build_export"}}'
                values: '1x20'
              - series: 'vault_kek_epoch_age_seconds{{instance="a", tenant="north"}}'
                values: '{12 * day}x120'
              - series: 'vault_kek_rotation_period_seconds{{instance="a"}}'
                values: '{7 * day}x120'
              - series: 'vault_http_request_seconds_count{{instance="a", route="/v1/patients", method="GET", status_class="5xx"}}'
                values: '0+10x20'
              - series: 'vault_http_request_seconds_count{{instance="a", route="/v1/patients", method="GET", status_class="2xx"}}'
                values: '0+10x20'
            alert_rule_test:
              - {{eval_time: 5m, alertname: VaultWorkerMissing, exp_alerts: [{_expect("VaultWorkerMissing")}]}}
              - {{eval_time: 5m, alertname: VaultDeadJobs,
                 exp_alerts: [{_expect("VaultDeadJobs", kind="lifecycle.build_export")}]}}
              - {{eval_time: 90m, alertname: VaultKekEpochOverdue,
                 exp_alerts: [{_expect("VaultKekEpochOverdue", tenant="north")}]}}
              - {{eval_time: 15m, alertname: VaultHigh5xxRate, exp_alerts: [{_expect("VaultHigh5xxRate")}]}}
    """)
    (tmp_path / "tests.yml").write_text(tests)
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_json_querying_vault_series():
    dashboard = json.loads((DEPLOY / "grafana" / "vault-dashboard.json").read_text())
    assert dashboard["panels"] and dashboard["uid"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
    assert len(referenced_metrics()) >= 20
