"""The chart's optional ServiceMonitor (``metrics.serviceMonitor.enabled``) for the Prometheus Operator.

kubernetes-validate knows no CRDs, so the ServiceMonitor is checked structurally: only fields the CRD
(monitoring.coreos.com/v1) defines, and every endpoint reaching a real port of a Service it selects, whose pods carry
that port. The plain Kubernetes objects it adds are validated against the schemas as the rest of the chart.
"""

from __future__ import annotations

import copy
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.integration.test_helm import (
    CHART,
    CI_VALUES,
    FULLNAME,
    KUBE_VERSIONS,
    NAMESPACE,
    _merge,
    deployment,
    one,
    render,
    secret_data,
)

#: The fields of a ServiceMonitor and of its endpoints this chart may write (a subset of the CRD's).
SPEC_FIELDS = {"selector", "endpoints", "namespaceSelector", "jobLabel"}
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "authorization"}
TOKEN = "a-metrics-token-of-24-ch"


def monitor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "ServiceMonitor", FULLNAME)


def selected_services(docs: list[dict[str, Any]], sm: dict[str, Any]) -> list[dict[str, Any]]:
    want = sm["spec"]["selector"]["matchLabels"].items()
    return [d for d in docs if d["kind"] == "Service" and want <= d["metadata"].get("labels", {}).items()]


def pods_of(docs: list[dict[str, Any]], service: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates a Service's selector picks."""
    want = service["spec"]["selector"].items()
    return [d["spec"]["template"] for d in docs
            if d["kind"] == "Deployment" and want <= d["spec"]["template"]["metadata"]["labels"].items()]


def targets(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Endpoint port name → the Services (selected by the ServiceMonitor) that have a port of that name."""
    sm = monitor(docs)
    found: dict[str, list[str]] = {}
    for endpoint in sm["spec"]["endpoints"]:
        found[endpoint["port"]] = sorted(
            s["metadata"]["name"] for s in selected_services(docs, sm)
            if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]})
    return found


def test_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-metrics")]


def test_the_service_monitor_scrapes_ingress_and_worker_through_headless_services() -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"},
                                                  "scrapeTimeout": "10s"}}})
    sm = monitor(docs)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert set(sm["spec"]) <= SPEC_FIELDS
    (endpoint,) = sm["spec"]["endpoints"]  # the web's /metrics is closed by default: not scraped
    assert set(endpoint) <= ENDPOINT_FIELDS
    assert (endpoint["port"], endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == \
        ("metrics", "/metrics", "30s", "10s")
    assert targets(docs) == {"metrics": [f"{FULLNAME}-ingress-metrics", f"{FULLNAME}-worker-metrics"]}
    for component in ("ingress", "worker"):
        service = one(docs, "Service", f"{FULLNAME}-{component}-metrics")
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["type"] == "ClusterIP"
        (port,) = service["spec"]["ports"]
        (pod,) = pods_of(docs, service)  # this component's pods, and only them
        assert pod == deployment(docs, component)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert {"name": port["targetPort"], "containerPort": port["port"], "protocol": "TCP"} in container["ports"]
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(service, version, strict=True)
    # The ingress's public LoadBalancer is selected too (same release labels) but has no metrics port: no target.
    public = one(docs, "Service", f"{FULLNAME}-ingress")
    assert "metrics" not in {p["name"] for p in public["spec"]["ports"]}


def test_the_web_is_scraped_with_its_token_when_one_is_set() -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}, "web": {"token": TOKEN}}})
    sm = monitor(docs)
    web = next(e for e in sm["spec"]["endpoints"] if e["port"] == "http")
    assert set(web) <= ENDPOINT_FIELDS and web["path"] == "/metrics"
    credentials = web["authorization"]["credentials"]
    assert web["authorization"]["type"] == "Bearer"
    assert secret_data(docs, credentials["name"])[credentials["key"]] == TOKEN
    assert targets(docs)["http"] == [f"{FULLNAME}-web"]
    networks = render({"metrics": {"serviceMonitor": {"enabled": True}, "web": {"allowNetworks": ["10.42.0.0/16"]}}})
    web = next(e for e in monitor(networks)["spec"]["endpoints"] if e["port"] == "http")
    assert "authorization" not in web  # the Prometheus pods' network is let in without a token


def test_nothing_to_scrape_is_refused_with_the_reason() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="nothing to scrape"):
        render({"metrics": {"port": 0, "serviceMonitor": {"enabled": True}}})
    only_web = render({"metrics": {"port": 0, "serviceMonitor": {"enabled": True}, "web": {"token": TOKEN}}})
    assert [e["port"] for e in monitor(only_web)["spec"]["endpoints"]] == ["http"]
    assert not [d for d in only_web if d["metadata"]["name"].endswith("-metrics")]


def test_lint_is_clean_with_the_service_monitor_on() -> None:
    values = _merge(copy.deepcopy(CI_VALUES), {"metrics": {"serviceMonitor": {"enabled": True}}})
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1 and report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
