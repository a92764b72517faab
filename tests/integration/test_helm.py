"""The Helm chart in helm/mailward: lint, render offline with Helm's own library, validate against Kubernetes schemas.

``helm-python-sdk`` binds Helm's Go SDK (no helm binary, no cluster); ``kubernetes-validate`` ships the Kubernetes
JSON schemas, so everything here runs offline. Both are test-only dependencies.
"""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "mailward"
CI_VALUES = yaml.safe_load((CHART / "ci" / "test-values.yaml").read_text())
RELEASE = "mw"
NAMESPACE = "mail"
FULLNAME = f"{RELEASE}-mailward"
#: Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
COMPONENTS = ("ingress", "web", "worker", "scheduler")

helm_python.disable_logging()


def render(values: dict[str, Any] | None = None, base: dict[str, Any] | None = CI_VALUES) -> list[dict[str, Any]]:
    """Render the chart (``base`` deep-merged with ``values``) and return every Kubernetes object."""
    merged = _merge(copy.deepcopy(base or {}), values or {})
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(merged, name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in manifests.items():
        if not path.endswith(".yaml"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {[_id(d) for d in docs]}"
    return found[0]


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return one(docs, "Deployment", f"{FULLNAME}-{component}")


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield _id(d), d["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = one(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render()


# --- lint and schema validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, CI_VALUES], ids=["defaults", "ci-values"])
def test_lint_reports_no_errors(values: dict[str, Any] | None) -> None:
    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error; 1 is info
    assert problems == []


def test_every_object_validates_against_the_kubernetes_schemas(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        for version in KUBE_VERSIONS:
            # strict: unknown fields (a misspelt key, a field at the wrong level) are errors too
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest(docs: list[dict[str, Any]]) -> None:
    """Guards the test above: a misplaced field must make validation fail."""
    broken = copy.deepcopy(deployment(docs, "ingress"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["tcpSockets"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


def test_everything_validates_with_every_option_turned_on() -> None:
    docs = render({
        "database": {"existingSecret": "pg", "existingSecretKey": "uri"},
        "redis": {"existingSecret": "redis-auth"},
        "secretKey": {"existingSecret": "mw-key"},
        "tls": {"enabled": True, "certificate": "CERT", "key": "KEY"},
        "clamd": {"address": "clamd.av.svc:3310"}, "dns": "10.0.0.10:53", "relayhost": "smarthost.example:25",
        "extraEnv": [{"name": "MAILWARD_MAX_MESSAGE_SIZE", "value": "26214400"}],
        "imagePullSecrets": [{"name": "regcred"}], "serviceAccountName": "mailward",
        "ingress": {"autoscaling": {"enabled": False},
                    "service": {"extraPorts": [{"name": "submission", "port": 587, "targetPort": 2587}]},
                    "nodeSelector": {"mail": "yes"}, "pdb": {"minAvailable": 1}},
        "worker": {"autoscaling": {"metrics": [{"type": "External", "external": {
            "metric": {"name": "rq_jobs"}, "target": {"type": "AverageValue", "averageValue": "100"}}}]}},
        "web": {"ingress": {"enabled": True, "className": "nginx",
                            "tls": [{"secretName": "web-tls", "hosts": ["mailward.example.com"]}]}},
        "metrics": {"web": {"token": "t" * 24, "allowNetworks": ["10.42.0.0/16"]}},
    })
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    kinds = {_id(d) for d in docs}
    assert f"Ingress/{FULLNAME}-web" in kinds
    assert f"Secret/{FULLNAME}-tls" in kinds
    pdb = one(docs, "PodDisruptionBudget", f"{FULLNAME}-ingress")["spec"]
    assert pdb.get("minAvailable") == 1 and "maxUnavailable" not in pdb


# --- what the chart must contain ----------------------------------------------------------------------------------

def test_the_expected_objects_are_rendered(docs: list[dict[str, Any]]) -> None:
    kinds = sorted(_id(d) for d in docs)
    assert kinds == sorted([
        *(f"Deployment/{FULLNAME}-{c}" for c in COMPONENTS),
        f"Service/{FULLNAME}-ingress", f"Service/{FULLNAME}-web",
        f"Job/{FULLNAME}-migrate",
        f"Secret/{FULLNAME}", f"Secret/{FULLNAME}-migrate",
        f"HorizontalPodAutoscaler/{FULLNAME}-ingress", f"HorizontalPodAutoscaler/{FULLNAME}-worker",
        *(f"PodDisruptionBudget/{FULLNAME}-{c}" for c in ("ingress", "web", "worker")),
        f"NetworkPolicy/{FULLNAME}-egress",
    ])


def test_each_process_runs_its_command(docs: list[dict[str, Any]]) -> None:
    def command(component: str) -> list[str]:
        return deployment(docs, component)["spec"]["template"]["spec"]["containers"][0]["command"]

    assert command("ingress") == ["mailward", "smtp"]
    assert command("worker") == ["mailward", "worker"]
    assert command("scheduler") == ["mailward", "scheduler"]
    web = command("web")
    assert web[0] == "gunicorn" and web[-1] == "app:create_app()"
    assert web[web.index("-b") + 1] == "0.0.0.0:8025"
    job = one(docs, "Job", f"{FULLNAME}-migrate")["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["mailward", "db", "upgrade"]
    assert job["restartPolicy"] == "Never"


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(docs: list[dict[str, Any]]) -> None:
    job = one(docs, "Job", f"{FULLNAME}-migrate")["metadata"]["annotations"]
    assert set(job["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in job["helm.sh/hook-delete-policy"]
    # Its Secret is a hook too (ordinary objects do not exist yet before install), created before the Job.
    secret = one(docs, "Secret", f"{FULLNAME}-migrate")["metadata"]["annotations"]
    assert set(secret["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(secret["helm.sh/hook-weight"]) < int(job["helm.sh/hook-weight"])
    env = env_of(one(docs, "Job", f"{FULLNAME}-migrate")["spec"]["template"]["spec"]["containers"][0])
    ref = env["MAILWARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == f"{FULLNAME}-migrate"
    assert secret_data(docs, ref["name"])[ref["key"]] == CI_VALUES["database"]["url"]


def test_scheduler_is_a_single_replica_replaced_with_recreate(docs: list[dict[str, Any]]) -> None:
    spec = deployment(docs, "scheduler")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    targets = [d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert f"{FULLNAME}-scheduler" not in targets


def test_hpas_target_rendered_deployments(docs: list[dict[str, Any]]) -> None:
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {f"{FULLNAME}-ingress", f"{FULLNAME}-worker"}
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["apiVersion"] == "apps/v1"
        target = one(docs, "Deployment", ref["name"])
        # The HPA owns the replica count: a fixed one would fight it on every upgrade.
        assert "replicas" not in target["spec"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"]


def test_hpa_disabled_gives_fixed_replicas_and_no_hpa() -> None:
    docs = render({"ingress": {"autoscaling": {"enabled": False}, "replicas": 3},
                   "worker": {"autoscaling": {"enabled": False}, "replicas": 4}})
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert deployment(docs, "ingress")["spec"]["replicas"] == 3
    assert deployment(docs, "worker")["spec"]["replicas"] == 4


def test_services_and_pdbs_select_their_pods(docs: list[dict[str, Any]]) -> None:
    def pod_labels(component: str) -> dict[str, str]:
        return deployment(docs, component)["spec"]["template"]["metadata"]["labels"]

    for component in ("ingress", "web", "worker"):
        selector = one(docs, "PodDisruptionBudget", f"{FULLNAME}-{component}")["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(component).items()
        others = [c for c in COMPONENTS if c != component]
        assert not any(selector.items() <= pod_labels(o).items() for o in others), "PDB selects other pods too"
    for component in COMPONENTS:
        d = deployment(docs, component)["spec"]
        assert d["selector"]["matchLabels"].items() <= d["template"]["metadata"]["labels"].items()
    for component in ("ingress", "web"):
        svc = one(docs, "Service", f"{FULLNAME}-{component}")["spec"]
        assert svc["selector"].items() <= pod_labels(component).items()
        assert not any(svc["selector"].items() <= pod_labels(o).items() for o in COMPONENTS if o != component)


def test_smtp_service_maps_25_to_the_listener(docs: list[dict[str, Any]]) -> None:
    svc = one(docs, "Service", f"{FULLNAME}-ingress")["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["externalTrafficPolicy"] == "Local"  # keeps the client IP for IP lists, SPF, DNSBL
    (port,) = svc["ports"]
    assert port["port"] == 25
    container = deployment(docs, "ingress")["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == 2525
    assert env_of(container)["MAILWARD_SMTP_LISTEN"]["value"] == "0.0.0.0:2525"
    assert container["readinessProbe"]["tcpSocket"]["port"] == 2525
    assert container["livenessProbe"]["tcpSocket"]["port"] == 2525


def test_submission_listener_is_exposed_on_587_with_tls() -> None:
    docs = render({"ingress": {"submission": {"enabled": True}}, "tls": {"enabled": True, "existingSecret": "mx"}})
    svc = one(docs, "Service", f"{FULLNAME}-ingress")["spec"]
    assert {(p["port"], p["targetPort"]) for p in svc["ports"]} == {(25, "smtp"), (587, "submission")}
    container = deployment(docs, "ingress")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"smtp": 2525, "submission": 2587,
                                                                         "metrics": 9125}
    assert env_of(container)["MAILWARD_SUBMISSION_LISTEN"]["value"] == "0.0.0.0:2587"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


def test_submission_without_tls_stops_rendering() -> None:
    """AUTH must never be offered in clear text: the chart refuses submission without a certificate."""
    with pytest.raises(helm_python.HelmRenderError, match="submission requires STARTTLS"):
        render({"ingress": {"submission": {"enabled": True}}})


def test_extra_ports_can_be_added() -> None:
    docs = render({"ingress": {"service": {"extraPorts": [{"name": "smtps", "port": 465, "targetPort": 2465}]}}})
    svc = one(docs, "Service", f"{FULLNAME}-ingress")["spec"]
    assert {(p["port"], p["targetPort"]) for p in svc["ports"]} == {(25, "smtp"), (465, "smtps")}


def test_web_service_probes_and_ingress() -> None:
    docs = render({"web": {"ingress": {"enabled": True, "hosts": [
        {"host": "console.example.net", "paths": [{"path": "/", "pathType": "Prefix"}]}]}}})
    container = deployment(docs, "web")["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == 8025
    svc = one(docs, "Service", f"{FULLNAME}-web")["spec"]
    assert ports[svc["ports"][0]["targetPort"]] == 8025
    rule = one(docs, "Ingress", f"{FULLNAME}-web")["spec"]["rules"][0]
    assert rule["host"] == "console.example.net"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-web", "port": {"number": svc["ports"][0]["port"]}}
    assert not [d for d in render() if d["kind"] == "Ingress"], "the web Ingress is off by default"


# --- every pod ----------------------------------------------------------------------------------------------------

def test_every_long_running_container_has_readiness_and_liveness_probes(docs: list[dict[str, Any]]) -> None:
    for component in COMPONENTS:
        for container in deployment(docs, component)["spec"]["template"]["spec"]["containers"]:
            assert container.get("readinessProbe"), f"{component}/{container['name']} has no readinessProbe"
            assert container.get("livenessProbe"), f"{component}/{container['name']} has no livenessProbe"


def test_every_mailward_container_gets_its_configuration(docs: list[dict[str, Any]]) -> None:
    for component in COMPONENTS:
        (container,) = deployment(docs, component)["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        for name in ("MAILWARD_DATABASE_URL", "MAILWARD_SECRET_KEY"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert "value" not in env[name], f"{name} must come from a Secret"
            assert ref["key"] in secret_data(docs, ref["name"]), f"{component}: {name} points at a missing key"
        db_ref = env["MAILWARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert secret_data(docs, db_ref["name"])[db_ref["key"]] == CI_VALUES["database"]["url"]
        assert env["MAILWARD_REDIS_URL"]["value"] == CI_VALUES["redis"]["url"]
        assert env["MAILWARD_HOSTNAME"]["value"] == CI_VALUES["hostname"]
        assert env["MAILWARD_WEB_LISTEN"]["value"] == "0.0.0.0:8025"
        assert env["MAILWARD_DATA_DIR"]["value"] == "/var/lib/mailward"
        assert "MAILWARD_CLAMD" not in env and "MAILWARD_TLS_CERT" not in env


def test_every_pod_is_locked_down(docs: list[dict[str, Any]]) -> None:
    for what, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["automountServiceAccountToken"] is False, what
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            assert "add" not in sc["capabilities"], what
            assert container["resources"]["requests"] and container["resources"]["limits"], what
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            data_dir = env_of(container)["MAILWARD_DATA_DIR"]["value"]
            for path in ("/tmp", data_dir):
                assert path in mounts, f"{what}: nothing writable at {path}"
                assert "emptyDir" in volumes[mounts[path]], f"{what}: {path} is not an emptyDir"


def test_worker_and_scheduler_probes_run(docs: list[dict[str, Any]], redis_server: Any, tmp_path: Path) -> None:
    """Run the rendered exec probes here: ready with a reachable Redis, not ready without; alive either way."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARD_")}
    base["MAILWARD_DATA_DIR"] = str(tmp_path)
    up = {**base, "MAILWARD_REDIS_URL": redis_server.url}
    down = {**base, "MAILWARD_REDIS_URL": f"unix://{tmp_path / 'no-such.sock'}"}

    def run(argv: list[str], env: dict[str, str]) -> int:
        assert argv[0] == "python"
        return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=60).returncode

    for component in ("worker", "scheduler"):
        (container,) = deployment(docs, component)["spec"]["template"]["spec"]["containers"]
        ready = container["readinessProbe"]["exec"]["command"]
        alive = container["livenessProbe"]["exec"]["command"]
        assert run(ready, up) == 0
        assert run(ready, down) != 0
        assert run(alive, down) == 0


# --- secrets and the values that must be set ----------------------------------------------------------------------

def test_existing_secrets_are_referenced_and_not_recreated() -> None:
    docs = render({
        "database": {"url": "", "existingSecret": "pg-app", "existingSecretKey": "uri"},
        "redis": {"url": "", "existingSecret": "redis-auth"},
        "secretKey": {"existingSecret": "mw-key", "existingSecretKey": "key"},
    })
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart must not create Secrets it was given"
    for _, spec in pod_specs(docs):
        env = env_of(spec["containers"][0])
        assert env["MAILWARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg-app", "key": "uri"}
    for component in COMPONENTS:
        env = env_of(deployment(docs, component)["spec"]["template"]["spec"]["containers"][0])
        assert env["MAILWARD_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "redis-url"}
        assert env["MAILWARD_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "mw-key", "key": "key"}


def test_secret_key_from_values_is_used_verbatim_and_generated_otherwise(docs: list[dict[str, Any]]) -> None:
    generated = secret_data(docs, FULLNAME)["secret-key"]
    assert len(generated) >= 32
    given = render({"secretKey": {"value": "s3cret-from-values"}})
    assert secret_data(given, FULLNAME)["secret-key"] == "s3cret-from-values"


def test_tls_mounts_the_certificate_files_on_the_ingress() -> None:
    docs = render({"tls": {"enabled": True, "existingSecret": "mx-cert"}})
    spec = deployment(docs, "ingress")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = env_of(container)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name, file in (("MAILWARD_TLS_CERT", "tls.crt"), ("MAILWARD_TLS_KEY", "tls.key")):
        path = env[name]["value"]
        assert path.endswith("/" + file)
        (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert volumes[mount["name"]]["secret"]["secretName"] == "mx-cert"
    assert not [d for d in docs if d["kind"] == "Secret" and d.get("type") == "kubernetes.io/tls"]
    # Only the ingress terminates TLS.
    assert "MAILWARD_TLS_CERT" not in env_of(deployment(docs, "web")["spec"]["template"]["spec"]["containers"][0])
    inline = render({"tls": {"enabled": True, "certificate": "-----CERT-----", "key": "-----KEY-----"}})
    assert secret_data(inline, f"{FULLNAME}-tls") == {"tls.crt": "-----CERT-----", "tls.key": "-----KEY-----"}


def test_optional_settings_reach_the_environment() -> None:
    docs = render({"clamd": {"address": "clamd.av.svc:3310"}, "logLevel": "DEBUG",
                   "extraEnv": [{"name": "MAILWARD_MAX_RECIPIENTS", "value": "100"}]})
    for component in COMPONENTS:
        env = env_of(deployment(docs, component)["spec"]["template"]["spec"]["containers"][0])
        assert env["MAILWARD_CLAMD"]["value"] == "clamd.av.svc:3310"
        assert env["MAILWARD_LOG_LEVEL"]["value"] == "DEBUG"
        assert env["MAILWARD_MAX_RECIPIENTS"]["value"] == "100"


def test_a_changed_setting_restarts_the_pods(docs: list[dict[str, Any]]) -> None:
    def checksum(d: list[dict[str, Any]]) -> str:
        return deployment(d, "worker")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(docs) == checksum(render())
    assert checksum(docs) != checksum(render({"redis": {"url": "redis://other:6379/0"}}))


# --- Redis password and the egress policy ----------------------------------------------------------------------

def test_redis_password_comes_from_a_secret() -> None:
    """Never a plain value in the pod spec: an existing Secret's key, or the chart's own Secret."""
    for component in COMPONENTS:
        assert "MAILWARD_REDIS_PASSWORD" not in env_of(deployment(render(), component)["spec"]["template"]["spec"]
                                                       ["containers"][0])
    existing = render({"redis": {"passwordSecret": "redis", "passwordSecretKey": "redis-password"}})
    given = render({"redis": {"password": "s3cret"}})
    for component in COMPONENTS:
        env = env_of(deployment(existing, component)["spec"]["template"]["spec"]["containers"][0])
        assert env["MAILWARD_REDIS_PASSWORD"] == {"name": "MAILWARD_REDIS_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": "redis", "key": "redis-password"}}}
        env = env_of(deployment(given, component)["spec"]["template"]["spec"]["containers"][0])
        ref = env["MAILWARD_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret_data(given, ref["name"])[ref["key"]] == "s3cret"
    assert "redis-password" not in secret_data(existing, FULLNAME)
    for doc in given + existing:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


def test_worker_probe_authenticates_to_a_redis_with_a_password(tmp_path: Path) -> None:
    """The rendered readiness probe against a real Redis with requirepass, with the environment the chart gives the
    pod (URL and MAILWARD_REDIS_PASSWORD): ready with the password, not ready with a wrong one."""
    from tests.support.servers import start_redis

    server = start_redis(tcp=True, password="pw-from-secret")
    try:
        docs = render({"redis": {"url": f"redis://127.0.0.1:{server.port}/0", "password": "pw-from-secret"}})
        (container,) = deployment(docs, "worker")["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        ref = env["MAILWARD_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARD_")}
        base.update(MAILWARD_DATA_DIR=str(tmp_path), MAILWARD_REDIS_URL=env["MAILWARD_REDIS_URL"]["value"])
        probe = [sys.executable, *container["readinessProbe"]["exec"]["command"][1:]]

        def run(password: str) -> int:
            return subprocess.run(probe, env={**base, "MAILWARD_REDIS_PASSWORD": password}, capture_output=True,
                                  timeout=60).returncode

        assert run(secret_data(docs, ref["name"])[ref["key"]]) == 0
        assert run("wrong") != 0
    finally:
        server.stop()


def test_egress_settings_reach_every_container() -> None:
    docs = render({"egress": {"tenantAllow": ["10.20.0.0/16", "fd12:3456::/48"], "smtpPorts": [25, 2526]}})
    for component in COMPONENTS:
        env = env_of(deployment(docs, component)["spec"]["template"]["spec"]["containers"][0])
        assert env["MAILWARD_TENANT_EGRESS_ALLOW"]["value"] == "10.20.0.0/16,fd12:3456::/48"
        assert env["MAILWARD_TENANT_SMTP_PORTS"]["value"] == "25,2526"
        assert env["MAILWARD_TENANT_LDAP_PORTS"]["value"] == "389,636"
        default = env_of(deployment(render(), component)["spec"]["template"]["spec"]["containers"][0])
        assert "MAILWARD_TENANT_EGRESS_ALLOW" not in default  # nothing private is allowed by default
        assert default["MAILWARD_TENANT_SMTP_PORTS"]["value"] == "25,465,587,2525"
    from tenants.platform.config import Config

    parsed = Config.from_env({name: e["value"] for name, e in env.items() if name.startswith("MAILWARD_TENANT_")})
    assert parsed.tenant_smtp_ports == {25, 2526} and len(parsed.tenant_egress_allow) == 2


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-egress")["spec"]
    assert policy["policyTypes"] == ["Egress"]
    return policy["egress"]  # type: ignore[no-any-return]


def _reachable(rules: list[dict[str, Any]], address: str, port: int) -> bool:
    """Whether a NetworkPolicy's egress rules let a pod reach ``address:port`` (ipBlock peers; a rule without ``to``
    reaches every address on its ports)."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    for rule in rules:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        if "to" not in rule:
            return True
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None:
                continue
            inside = [ipaddress.ip_network(block["cidr"])]
            left_out = [ipaddress.ip_network(x) for x in block.get("except", [])]
            if any(ip.version == n.version and ip in n for n in inside) and not any(
                    ip.version == n.version and ip in n for n in left_out):
                return True
    return False


def test_network_policy_keeps_every_pod_off_metadata_and_private_networks(docs: list[dict[str, Any]]) -> None:
    """The second wall: tenants' SMTP and LDAP ports reach the internet only; the metadata service and the cluster's
    private ranges (where Redis lives) are not reachable on them, nor on the metadata service's port 80."""
    selector = one(docs, "NetworkPolicy", f"{FULLNAME}-egress")["spec"]["podSelector"]["matchLabels"]
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        what, labels = _id(d), d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{what} is not under the egress policy"
    rules = _rules(docs)
    for port in (25, 465, 587, 2525, 389, 636):
        assert _reachable(rules, "93.184.216.34", port) and _reachable(rules, "2606:2800:220:1::1", port)
        for internal in ("169.254.169.254", "10.0.0.5", "172.20.1.1", "192.168.1.1", "127.0.0.1", "100.64.0.1",
                         "fd00:ec2::254", "::1", "fe80::1", "168.63.129.16"):
            assert not _reachable(rules, internal, port), (internal, port)
    for port in (80, 443, 8080):
        assert not _reachable(rules, "169.254.169.254", port) and not _reachable(rules, "93.184.216.34", port)
    assert _reachable(rules, "10.96.0.10", 53) and _reachable(rules, "10.1.2.3", 6379)  # DNS and the stores


def test_network_policy_follows_the_egress_values_and_can_be_turned_off() -> None:
    docs = render({"egress": {"tenantAllow": ["10.20.0.0/16"], "ldapPorts": [3269]},
                   "networkPolicy": {"redis": {"to": [{"podSelector": {"matchLabels": {"app": "redis"}}}]},
                                     "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.0.5.25/32"}}],
                                                      "ports": [{"port": 25, "protocol": "TCP"}]}]}})
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[0], strict=True)
    rules = _rules(docs)
    assert _reachable(rules, "10.20.9.9", 25) and _reachable(rules, "10.20.9.9", 3269)
    assert not _reachable(rules, "10.20.9.9", 389) and not _reachable(rules, "10.21.0.1", 25)
    assert _reachable(rules, "10.0.5.25", 25)  # the extra rule (a relay host on a private address)
    (redis_rule,) = [r for r in rules if r["ports"] == [{"port": 6379, "protocol": "TCP"}]]
    assert redis_rule["to"] == [{"podSelector": {"matchLabels": {"app": "redis"}}}]
    assert not [d for d in render({"networkPolicy": {"enabled": False}}) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize(("values", "message"), [
    ({"database": {"url": ""}}, "database.url"),
    ({"redis": {"url": ""}}, "redis.url"),
    ({"hostname": ""}, "hostname"),
    ({"tls": {"enabled": True}}, "tls.existingSecret"),
])
def test_missing_required_values_stop_rendering(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message.replace(".", r"\.")):
        render(values)


def test_defaults_alone_do_not_render() -> None:
    """Without a database and a Redis the pods would each run a private SQLite and Valkey: refuse loudly."""
    with pytest.raises(helm_python.HelmRenderError, match="database"):
        render(base=None)


# --- metrics ------------------------------------------------------------------------------------------------------

def test_ingress_and_worker_expose_their_metrics_port_to_prometheus(docs: list[dict[str, Any]]) -> None:
    port = 9125
    for component in ("ingress", "worker"):
        template = deployment(docs, component)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
        (container,) = template["spec"]["containers"]
        assert env_of(container)["MAILWARD_METRICS_PORT"]["value"] == f"0.0.0.0:{port}"
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    # The web's /metrics is closed by default: no annotation (a scrape would get 404), no token, no networks.
    web = deployment(docs, "web")["spec"]["template"]
    assert "prometheus.io/scrape" not in web["metadata"]["annotations"]
    assert not {"MAILWARD_METRICS_TOKEN", "MAILWARD_METRICS_ALLOW", "MAILWARD_METRICS_PORT"} & set(
        env_of(web["spec"]["containers"][0]))
    # Nothing publishes the metrics port on a Service (the ingress's is a LoadBalancer on the internet).
    for service in (d for d in docs if d["kind"] == "Service"):
        assert port not in {p.get("targetPort") for p in service["spec"]["ports"]}
        assert "metrics" not in {p.get("targetPort") for p in service["spec"]["ports"]}


def test_metrics_port_0_turns_it_off_and_annotations_can_be_left_out() -> None:
    off = render({"metrics": {"port": 0}})
    quiet = render({"metrics": {"podAnnotations": False}})
    for component in ("ingress", "worker"):
        template = deployment(off, component)["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert "MAILWARD_METRICS_PORT" not in env_of(container)
        assert "metrics" not in {p["name"] for p in container.get("ports", [])}
        assert "prometheus.io/scrape" not in template["metadata"]["annotations"]
        template = deployment(quiet, component)["spec"]["template"]
        assert "prometheus.io/scrape" not in template["metadata"]["annotations"]
        assert "MAILWARD_METRICS_PORT" in env_of(template["spec"]["containers"][0])


def test_web_metrics_token_comes_from_a_secret_and_networks_open_it() -> None:
    token = "a-metrics-token-of-24-ch"
    docs = render({"metrics": {"web": {"token": token, "allowNetworks": ["10.42.0.0/16", "fd00:42::/64"]}}})
    web = deployment(docs, "web")["spec"]["template"]
    env = env_of(web["spec"]["containers"][0])
    ref = env["MAILWARD_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert "value" not in env["MAILWARD_METRICS_TOKEN"]
    assert secret_data(docs, ref["name"])[ref["key"]] == token
    assert env["MAILWARD_METRICS_ALLOW"]["value"] == "10.42.0.0/16,fd00:42::/64"
    assert web["metadata"]["annotations"]["prometheus.io/port"] == "8025"
    for component in ("ingress", "worker", "scheduler"):
        assert "MAILWARD_METRICS_TOKEN" not in env_of(deployment(docs, component)["spec"]["template"]["spec"]
                                                      ["containers"][0])
    given = render({"metrics": {"web": {"existingSecret": "prom-token", "existingSecretKey": "token"}}})
    env = env_of(deployment(given, "web")["spec"]["template"]["spec"]["containers"][0])
    assert env["MAILWARD_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "prom-token", "key": "token"}
    assert "metrics-token" not in secret_data(given, FULLNAME)
