"""`lbctl export`: the YAML parses and carries image, ports, replicas, env and command."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lbctl.export import export, k8s_name, to_compose, to_kubernetes
from lbctl.model import AppSpec, InvalidInput, Mode, Publish


def _spec(**kw: Any) -> AppSpec:
    base: dict[str, Any] = {
        "name": "web",
        "image": "lbctl/demo:latest",
        "publish": Publish.parse("127.0.0.1:8080:80"),
        "replicas": 3,
        "mode": Mode.EBPF,
        "env": {"GREETING": "yes", "PORTS": "8080:80"},  # YAML 1.1 traps: bool, base 60
        "command": ("--port", "80"),
    }
    base.update(kw)
    return AppSpec(**base)


def test_compose_parses_and_carries_everything() -> None:
    text = to_compose(_spec())
    doc = yaml.safe_load(text)
    svc = doc["services"]["web"]
    assert svc["image"] == "lbctl/demo:latest"
    assert svc["command"] == ["--port", "80"]
    assert svc["environment"] == {"GREETING": "yes", "PORTS": "8080:80", "LBCTL_APP": "web"}
    assert svc["labels"] == {"lbctl.app": "web"}
    assert svc["deploy"] == {"replicas": 3}
    assert "scale" not in svc  # docker-compose 1.29 refuses scale beside deploy.replicas
    assert svc["expose"] == ["80/tcp"]
    # Compose publishes nothing: N replicas cannot share a host port there; lbctl holds it.
    assert "ports" not in svc
    assert doc["x-lbctl"] == {"app": "web", "publish": "127.0.0.1:8080:80/tcp", "mode": "ebpf"}
    assert "lbctl run web --image lbctl/demo:latest -p 127.0.0.1:8080:80/tcp --replicas 0" in text


def test_compose_without_command_or_env() -> None:
    svc = yaml.safe_load(to_compose(_spec(command=(), env={})))["services"]["web"]
    assert "command" not in svc
    assert svc["environment"] == {"LBCTL_APP": "web"}


def test_kubernetes_deployment_and_service() -> None:
    udp = _spec(publish=Publish.parse("0.0.0.0:80:8080/udp"))
    docs = list(yaml.safe_load_all(to_kubernetes(udp)))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    dep, svc = docs
    assert dep["apiVersion"] == "apps/v1" and dep["spec"]["replicas"] == 3
    sel = dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]
    assert sel.items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "lbctl/demo:latest"
    assert c["args"] == ["--port", "80"]  # lbctl's command is the Cmd, not the entrypoint
    assert c["ports"] == [{"containerPort": 8080, "protocol": "UDP"}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["GREETING"] == "yes" and env["PORTS"] == "8080:80" and env["LBCTL_APP"] == "web"
    assert env["LBCTL_REPLICA"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "readinessProbe" not in c  # no TCP probe for a UDP port
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["selector"] == sel
    assert svc["spec"]["ports"] == [
        {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": 8080}
    ]


def test_kubernetes_tcp_has_readiness_probe() -> None:
    dep = next(yaml.safe_load_all(to_kubernetes(_spec())))
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"] == {"tcpSocket": {"port": 80}}


def test_kubernetes_names_are_dns_labels() -> None:
    assert k8s_name("web") == "web"
    assert k8s_name("my_app.v2") == "my-app-v2"
    assert k8s_name("2fast") == "app-2fast"
    docs = list(yaml.safe_load_all(to_kubernetes(_spec(name="my_app"))))
    assert all(d["metadata"]["name"] == "my-app" for d in docs)
    assert docs[0]["metadata"]["labels"]["lbctl.app"] == "my_app"


def test_unknown_format() -> None:
    assert export(_spec(), "compose") == to_compose(_spec())
    with pytest.raises(InvalidInput, match="unknown export format"):
        export(_spec(), "helm")


def test_several_publishes_export_every_address_and_family() -> None:
    spec = AppSpec.from_json({"name": "web", "image": "lbctl/demo:latest", "replicas": 2,
                              "publish": ["0.0.0.0:80:8080", "[::]:80:8080"]})
    compose = export(spec, "compose")
    assert "-p 0.0.0.0:80:8080/tcp -p [::]:80:8080/tcp --replicas 0" in compose
    doc = yaml.safe_load(compose)
    assert doc["x-lbctl"]["publish"] == doc["services"]["web"]["x-lbctl"]["publish"] == [
        "0.0.0.0:80:8080/tcp", "[::]:80:8080/tcp"]
    assert "&id" not in compose  # each copy written out, no YAML anchor for the list
    svc = list(yaml.safe_load_all(export(spec, "kubernetes")))[1]["spec"]
    assert svc["ports"] == [{"name": "tcp", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    assert svc["ipFamilyPolicy"] == "PreferDualStack" and svc["ipFamilies"] == ["IPv4", "IPv6"]


def test_kubernetes_renders_the_options_it_has_and_names_the_others() -> None:
    spec = AppSpec.from_json({
        "name": "web", "image": "lbctl/demo", "publish": "8080:8080", "memory": "512m",
        "cpus": 0.5, "user": "1000:1000", "workdir": "/data", "read-only": True,
        "cap-drop": ["ALL"], "entrypoint": ["/httpd"], "health-cmd": "curl -f localhost",
        "health-interval": "1m30s", "health-retries": 2, "stop-timeout": 20,
        "add-host": ["db:10.0.0.5", "db2:10.0.0.5"], "dns": ["10.0.0.53"],
        "label": {"team": "web"}, "volume": ["data:/data"], "network": ["backend"],
        "init": True,
    })
    text = to_kubernetes(spec)
    deployment, _ = list(yaml.safe_load_all(text))
    pod = deployment["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"] == {"limits": {"memory": "512Mi", "cpu": "0.5"}}
    assert c["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["command"] == ["/httpd"] and c["workingDir"] == "/data"
    assert c["livenessProbe"] == {"exec": {"command": ["/bin/sh", "-c", "curl -f localhost"]},
                                  "periodSeconds": 90, "failureThreshold": 2}
    assert pod["terminationGracePeriodSeconds"] == 20
    assert pod["hostAliases"] == [{"ip": "10.0.0.5", "hostnames": ["db", "db2"]}]
    assert pod["dnsConfig"] == {"nameservers": ["10.0.0.53"]}
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"team": "web"}
    # what Kubernetes has no field for is named, never dropped silently
    assert "#   volume, network, init\n" in text


def test_kubernetes_shm_size_and_numeric_groups() -> None:
    """--shm-size is a memory-backed emptyDir at /dev/shm; numeric --group-add are the pod's
    supplementalGroups, names have no Kubernetes field and are named."""
    spec = AppSpec.from_json({"name": "web", "image": "lbctl/demo", "publish": "8080:8080",
                              "shm-size": "96m", "group-add": ["1234", "5678"]})
    text = to_kubernetes(spec)
    pod = next(yaml.safe_load_all(text))["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                            "sizeLimit": "96Mi"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert pod["securityContext"] == {"supplementalGroups": [1234, 5678]}
    assert "Not in these manifests" not in text
    named = AppSpec.from_json({"name": "web", "image": "lbctl/demo", "publish": "8080:8080",
                               "group-add": ["audio"], "shm-size": "100000"})
    text = to_kubernetes(named)
    pod = next(yaml.safe_load_all(text))["spec"]["template"]["spec"]
    assert "securityContext" not in pod
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "100000"
    assert "#   group-add (a name; Kubernetes takes numeric supplementalGroups)\n" in text
