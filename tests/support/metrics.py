"""The metrics token the test settings configure, and a parser for /metrics output."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

METRICS_TOKEN = "test-metrics-token-0123456789abcdef"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def families(text: str) -> dict:
    """Family name -> list of samples (the parser strips _total from counter names)."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def referenced_metrics() -> set[str]:
    """Metric names the shipped alert rules and Grafana dashboard query, as they appear in
    /metrics text (histograms by their _bucket/_count/_sum series, counters by _total)."""
    import json
    import re
    from pathlib import Path

    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    exprs = [rule["expr"] for group in yaml.safe_load((deploy / "prometheus" / "vault.rules.yml").read_text())["groups"]
             for rule in group["rules"]]
    dashboard = json.loads((deploy / "grafana" / "vault-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return {name for expr in exprs for name in re.findall(r"\bvault_[a-z0-9_]+\b", expr)}
