"""deploy/k8s, checked offline (no cluster runs here): every overlay renders with `kubectl
kustomize` and passes `kubernetes-validate --strict` against a pinned Kubernetes version, and what
the manifests tell the server agrees with the server's own configuration: the FACEDET_* variables
are settings it has and accepts, the probes ask the port it listens on, the grace period covers
preStop plus its drain, the metrics port is its metrics port, the HPA's metric is one it exports,
and in the sidecar pod the socket's group lets the pipeline's UID connect."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from facedet_server.app import config as server_config
from facedet_server.app.metrics import PrometheusMetrics
from facedet_test_support import REPO
from prometheus_client import CollectorRegistry

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "sidecar")
# The oldest Kubernetes minor still supported upstream when this was written (1.35-1.37): what
# validates there validates on the later ones. Native gRPC probes are GA since 1.27, the preStop
# sleep action since 1.34.
KUBERNETES_VERSION = "1.35.0"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} missing from the venv: `make setup-dev` installs the dev extra", pytrace=False)
    return str(path)


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay as `kubectl kustomize` renders it, in a file."""
    folder = tmp_path_factory.mktemp("k8s")
    files = {}
    for overlay in OVERLAYS:
        files[overlay] = folder / f"{overlay}.yaml"
        files[overlay].write_text(run(tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)))
    return files


def documents(rendered: dict[str, Path], overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered[overlay].read_text()) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


def server_config_of(facedet: dict[str, Any]) -> server_config.ServerConfig:
    """The configuration `facedet serve` gets from the container's environment, read and
    validated by the server's own code (an unknown FACEDET_* name is refused here: the server
    would ignore it silently)."""
    env = {e["name"]: e["value"] for e in facedet.get("env", [])}
    known = {s.env for s in server_config.SETTINGS}
    unknown = sorted(name for name in env if name.startswith("FACEDET_") and name not in known)
    assert not unknown, f"not settings of facedet serve: {unknown}"
    parser = argparse.ArgumentParser()
    server_config.add_arguments(parser, environ=env)
    return server_config.from_args(parser.parse_args([]))  # validates too


def tcp_ports(config: server_config.ServerConfig) -> set[int]:
    return {int(a.rpartition(":")[2]) for a in config.listen if not a.startswith("unix:")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_pinned_kubernetes(
    rendered: dict[str, Path], overlay: str
) -> None:
    out = run(
        tool("kubernetes-validate"), "--strict", "--kubernetes-version", KUBERNETES_VERSION,
        str(rendered[overlay]),
    )
    kinds = {doc["kind"] for doc in documents(rendered, overlay)}
    assert out.count("passed") == len(documents(rendered, overlay)), out
    expected = {"Deployment", "NetworkPolicy"} if overlay == "sidecar" else {
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"
    }
    assert kinds == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_grace_and_ports_agree_with_the_server_config(
    rendered: dict[str, Path], overlay: str
) -> None:
    spec = pod_spec(documents(rendered, overlay))
    facedet = container(spec, "facedet")
    config = server_config_of(facedet)
    ports = tcp_ports(config)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = facedet[probe]["grpc"]  # the kubelet's own gRPC health check, grpc.health.v1
        assert grpc_probe["port"] in ports, (probe, grpc_probe, config.listen)
        assert grpc_probe.get("service", "") == ""
    # The kubelet's SIGKILL must come after preStop and the whole drain, with time to exit.
    pre_stop = facedet["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + config.grace_seconds + 2
    # The startup probe waits at least as long as the tests let a server take to serve.
    startup = facedet["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    declared = {p["containerPort"] for p in facedet.get("ports", [])}
    if overlay != "sidecar":
        assert ports <= declared
    if config.metrics_listen:
        metrics_port = int(config.metrics_listen.rpartition(":")[2])
        assert metrics_port in declared
        annotations = one(documents(rendered, overlay), "Deployment")["spec"]["template"]["metadata"]
        assert annotations["annotations"]["prometheus.io/port"] == str(metrics_port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_numeric_user_read_only(rendered: dict[str, Path], overlay: str) -> None:
    name = "Dockerfile.gpu" if overlay == "gpu" else "Dockerfile"
    dockerfile = (REPO / "deploy" / "docker" / name).read_text()
    user, group = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)[-1]
    spec = pod_spec(documents(rendered, overlay))
    facedet = container(spec, "facedet")
    context = {**spec["securityContext"], **facedet["securityContext"]}
    assert context["runAsNonRoot"] is True
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (user, group)
    assert facedet["securityContext"]["readOnlyRootFilesystem"] is True
    assert facedet["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_service_is_headless_on_the_grpc_port(rendered: dict[str, Path]) -> None:
    docs = documents(rendered, "cpu")
    service = one(docs, "Service")["spec"]
    assert service["clusterIP"] == "None"  # DNS gives every pod: clients balance (round_robin)
    config = server_config_of(container(pod_spec(docs), "facedet"))
    grpc_port = next(p for p in service["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] in tcp_ports(config)
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_hpa_scales_on_a_metric_the_server_exports_through_the_adapter_rule(
    rendered: dict[str, Path],
) -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    exported = {metric.name for metric in registry.collect()}
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    for overlay in ("cpu", "gpu"):
        docs = documents(rendered, overlay)
        hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
        for metric in hpa["metrics"]:
            name = metric["pods"]["metric"]["name"]
            assert name in exported, (name, sorted(exported))
            assert name in served, "no prometheus-adapter rule serves it"


def test_gpu_overlay_asks_for_one_gpu_and_keeps_the_compile_cache(rendered: dict[str, Path]) -> None:
    facedet = container(pod_spec(documents(rendered, "gpu")), "facedet")
    assert facedet["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert facedet["image"].endswith(":gpu")
    # The final stage's FACEDET_HOME, which holds inductor's cache (the build stage's comes first).
    home = re.findall(r"FACEDET_HOME=(\S+)", (REPO / "deploy" / "docker" / "Dockerfile.gpu").read_text())[-1]
    assert home in {m["mountPath"] for m in facedet["volumeMounts"]}


def test_sidecar_socket_lets_the_pipelines_uid_connect(rendered: dict[str, Path]) -> None:
    spec = pod_spec(documents(rendered, "sidecar"))
    facedet, pipeline = container(spec, "facedet"), container(spec, "pipeline")
    config = server_config_of(facedet)
    sockets = [a.removeprefix("unix://") for a in config.listen if a.startswith("unix://")]
    assert len(sockets) == 1
    socket = Path(sockets[0])
    # Both containers mount the same emptyDir at the socket's folder.
    def volume_at(c: dict[str, Any]) -> str:
        return str(next(m["name"] for m in c["volumeMounts"] if Path(m["mountPath"]) == socket.parent))

    assert volume_at(facedet) == volume_at(pipeline)
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == volume_at(facedet))
    pipeline_env = {e["name"]: e["value"] for e in pipeline["env"]}
    assert pipeline_env["FACEDET_SERVER"] == f"unix://{socket}"
    # Another UID, connecting through the group: the pod's fsGroup is every container's
    # supplementary group, the socket is given that group with group read and write.
    assert pipeline["securityContext"]["runAsUser"] != facedet["securityContext"]["runAsUser"]
    assert config.unix_socket_group == str(spec["securityContext"]["fsGroup"])
    assert server_config.socket_mode(config.unix_socket_mode) & 0o060 == 0o060
    assert server_config.socket_mode(config.unix_socket_mode) & 0o007 == 0
