"""`lbctl export`: every format parses and carries the app; the Kubernetes manifests pass the
API's own schemas (strict) for the oldest and the newest Kubernetes kubernetes-validate ships,
the stack files the Compose Specification's schema, for a few realistic apps."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lbctl.export import export, k8s_name, to_compose, to_kubernetes, to_swarm
from lbctl.export.common import go_duration
from lbctl.model import AppSpec, InvalidInput, Mode, Publish
from lbctl.model.readiness import ReadinessProbe
from tests.formats import validate_compose, validate_kubernetes


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
    docs = validate_kubernetes(to_kubernetes(udp))
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
    assert svc["spec"]["externalTrafficPolicy"] == "Local"  # the pod sees the client's address
    assert svc["spec"]["selector"] == sel
    assert svc["spec"]["ports"] == [
        {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": 8080}
    ]


def test_kubernetes_tcp_has_readiness_probe() -> None:
    dep = next(yaml.safe_load_all(to_kubernetes(_spec())))
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"] == {"tcpSocket": {"port": 80}, "periodSeconds": 1,
                                   "failureThreshold": 3}


def test_the_readiness_path_is_an_http_probe_everywhere_it_maps() -> None:
    """Kubernetes: an httpGet readinessProbe with the app's thresholds (and what it cannot say
    in the header), never the liveness probe; Swarm: a health check (Swarm routes only to
    healthy tasks); compose: x-lbctl.readiness, read back as the same probe."""
    spec = _spec(publish=Publish.parse("127.0.0.1:80:8080"), readiness=ReadinessProbe.from_json({
        "path": "/ready", "host": "web.example", "status": "200-299", "interval": 2,
        "timeout": 0.5, "failure_threshold": 4, "success_threshold": 2}))
    text = to_kubernetes(spec)
    [c] = validate_kubernetes(text)[0]["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/ready", "port": 8080,
                    "httpHeaders": [{"name": "Host", "value": "web.example"}]},
        "periodSeconds": 2, "timeoutSeconds": 1, "successThreshold": 2, "failureThreshold": 4}
    assert "livenessProbe" not in c  # readiness is not liveness: kept, not restarted
    assert "# Probe: readiness status 200-299 (Kubernetes: 200-399).\n" in text
    assert "# Probe: readiness every 2s, timeout 0.5s (Kubernetes: 1s at the least).\n" in text
    swarm = yaml.safe_load(export(spec, "swarm"))["services"]["web"]
    assert swarm["healthcheck"] == {
        "test": ["CMD-SHELL", "curl -fsS -o /dev/null -H 'Host: web.example' "
                 "http://localhost:8080/ready || wget -q -O /dev/null --header 'Host: "
                 "web.example' http://localhost:8080/ready"],
        "interval": "2s", "timeout": "500ms", "retries": 4}
    compose = yaml.safe_load(export(spec, "compose"))
    assert compose["services"]["web"]["x-lbctl"]["readiness"] == spec.readiness.changed()


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
    svc = validate_kubernetes(export(spec, "kubernetes"))[1]["spec"]
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
    deployment, claim, _ = validate_kubernetes(text)
    assert "&id" not in text  # each copy of the labels written out, no YAML anchor
    pod = deployment["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"] == {"limits": {"memory": "512Mi", "cpu": "0.5"},
                              "requests": {"memory": "512Mi", "cpu": "0.5"}}
    assert c["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["command"] == ["/httpd"] and c["workingDir"] == "/data"
    probe = {"exec": {"command": ["/bin/sh", "-c", "curl -f localhost"]}, "periodSeconds": 90,
             "failureThreshold": 2}
    # lbctl routes only to healthy replicas and replaces an unhealthy one: both probes
    assert c["readinessProbe"] == c["livenessProbe"] == probe
    # the drain: preStop keeps the pod serving for lbctl's drain time, then the stop grace
    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "10"]}}}
    assert pod["terminationGracePeriodSeconds"] == 10 + 20
    assert pod["hostAliases"] == [{"ip": "10.0.0.5", "hostnames": ["db", "db2"]}]
    assert pod["dnsConfig"] == {"nameservers": ["10.0.0.53"]}
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"team": "web"}
    # the named volume is a claim every replica mounts
    # (one claim per Docker volume, named like it: volumes are the host's, not the app's)
    assert pod["volumes"] == [{"name": "v-data", "persistentVolumeClaim": {"claimName": "data"}}]
    assert c["volumeMounts"] == [{"name": "v-data", "mountPath": "/data"}]
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # what Kubernetes has no field for is named, never dropped silently
    assert "#   network (pods reach each other through Services, not named networks), init\n" \
        in text


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


def test_kubernetes_rolling_update_from_the_update_policy() -> None:
    def strategy(**update: Any) -> dict[str, Any]:
        spec = AppSpec.from_json({"name": "web", "image": "img", "publish": "80:80",
                                  "update": update})
        dep = validate_kubernetes(to_kubernetes(spec))[0]["spec"]
        return {k: dep.get(k) for k in ("strategy", "minReadySeconds",
                                        "progressDeadlineSeconds")}

    assert strategy() == {"strategy": {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": 1, "maxUnavailable": 0}}, "minReadySeconds": 5,
        "progressDeadlineSeconds": 60}
    # start-first: the parallelism is the surge; max-unavailable as given
    got = strategy(parallelism=2, max_unavailable=1, monitor=2.5, ready_timeout=1)
    assert got["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 1}
    assert (got["minReadySeconds"], got["progressDeadlineSeconds"]) == (3, 4)
    # stop-first: nothing above the count, the parallelism below it
    got = strategy(order="stop-first", parallelism=2, monitor=0)
    assert got["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 2}
    assert got["minReadySeconds"] is None


def test_kubernetes_volumes_and_binds() -> None:
    spec = AppSpec.from_json({
        "name": "web", "image": "img", "publish": "80:80", "replicas": 2,
        "volume": ["data:/data:ro", "/cache"],
        "mount": ["type=volume,source=logs,target=/logs",
                  "type=tmpfs,target=/scratch,tmpfs-size=16m"],
        "tmpfs": ["/run:size=64m"],
    })
    deployment, c1, c2, _ = validate_kubernetes(to_kubernetes(spec))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "v-data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "v-cache", "emptyDir": {}},
        {"name": "v-logs", "persistentVolumeClaim": {"claimName": "logs"}},
        {"name": "v-scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "v-run", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    assert pod["containers"][0]["volumeMounts"][0] == {"name": "v-data", "mountPath": "/data",
                                                       "readOnly": True}
    assert [c1["metadata"]["name"], c2["metadata"]["name"]] == ["data", "logs"]
    assert c1["metadata"]["annotations"] == {"lbctl.volume": "data"}
    # tmpfs options other than the size have no emptyDir field: named in the header
    text = to_kubernetes(AppSpec.from_json({"name": "web", "image": "img", "publish": "80:80",
                                            "tmpfs": ["/run:size=1m,mode=1777"]}))
    assert "#   tmpfs mode of /run\n" in text
    for bind in ({"volume": ["/srv/conf:/etc/conf:ro"]},
                 {"mount": ["type=bind,source=/srv,target=/srv"]}):
        spec = AppSpec.from_json({"name": "web", "image": "img", "publish": "80:80", **bind})
        with pytest.raises(InvalidInput, match=r"^web: bind mount .* cannot be exported to "
                           "Kubernetes: a pod has no host's files to bind"):
            to_kubernetes(spec)


def test_kubernetes_host_network_and_ipv6() -> None:
    spec = AppSpec.from_json({"name": "api", "image": "img", "publish": "0.0.0.0:8080:8080",
                              "mode": "ebpf", "network": ["host"], "replicas": 4})
    dep, svc = validate_kubernetes(to_kubernetes(spec))
    pod = dep["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["containers"][0]["ports"] == [{"containerPort": 8080, "protocol": "TCP",
                                              "hostPort": 8080}]
    v6 = AppSpec.from_json({"name": "web", "image": "img", "publish": "[::]:80:8080/udp"})
    _, svc = validate_kubernetes(to_kubernetes(v6))
    assert svc["spec"]["ipFamilies"] == ["IPv6"]
    assert svc["spec"]["ports"][0]["protocol"] == "UDP"


# ---- swarm ------------------------------------------------------------------------------------

def test_go_durations() -> None:
    assert [go_duration(s) for s in (0, 0.5, 1, 1.5, 90, 3600, 3725.25)] == [
        "0s", "500ms", "1s", "1.5s", "1m30s", "1h", "1h2m5.25s"]


def test_swarm_stack_file() -> None:
    spec = AppSpec.from_json({
        "name": "web", "image": "lbctl/demo:latest", "replicas": 3,
        "publish": "127.0.0.1:8080:80",
        "env": {"A": "1"}, "command": ["--x"],
        "update": {"parallelism": 2, "delay": 1.5, "monitor": 3, "order": "stop-first",
                   "failure_action": "pause"},
        "memory": "64m", "cpus": 0.5, "health-cmd": ["/httpd", "--check"],
        "health-interval": "2s", "health-retries": 2, "volume": ["data:/data", "/cache"],
        "mount": ["type=tmpfs,target=/scratch,tmpfs-size=16m"], "tmpfs": ["/run:size=1m"],
        "network": ["backend"], "user": "1000:1000", "label": {"team": "web"},
        "stop-timeout": 12, "cap-drop": ["ALL"],
    })
    text = to_swarm(spec)
    doc = validate_compose(text)
    assert doc["version"] == "3.9"
    assert "&id" not in text
    svc = doc["services"]["web"]
    assert svc["ports"] == [{"target": 80, "published": 8080, "protocol": "tcp",
                             "mode": "ingress"}]
    deploy = svc["deploy"]
    assert deploy["replicas"] == 3
    assert deploy["update_config"] == {"parallelism": 2, "delay": "1.5s",
                                       "failure_action": "pause", "monitor": "3s",
                                       "max_failure_ratio": 0, "order": "stop-first"}
    assert deploy["rollback_config"] == {**deploy["update_config"], "failure_action": "pause"}
    assert deploy["resources"] == {"limits": {"cpus": "0.5", "memory": "64m"}}
    assert deploy["restart_policy"] == {"condition": "any"}
    assert svc["healthcheck"] == {"test": ["CMD", "/httpd", "--check"], "interval": "2s",
                                  "retries": 2}
    assert svc["volumes"] == ["data:/data", "/cache",
                              {"type": "tmpfs", "target": "/scratch", "tmpfs": {"size": 16 << 20}},
                              {"type": "tmpfs", "target": "/run", "tmpfs": {"size": 1 << 20}}]
    for key in ("tmpfs", "mem_limit", "cpus", "network_mode"):
        assert key not in svc, key
    assert svc["networks"] == ["backend"]
    assert doc["networks"] == {"backend": {"name": "backend", "driver": "overlay",
                                           "attachable": True}}
    assert doc["volumes"] == {"data": {"name": "data"}}
    assert svc["labels"] == {"team": "web"} and deploy["labels"] == {"lbctl.app": "web"}
    assert svc["stop_grace_period"] == "12s" and svc["cap_drop"] == ["ALL"]
    assert svc["environment"] == {"A": "1", "LBCTL_APP": "web"}
    assert "lbctl publishes on 127.0.0.1 only; Swarm cannot" in text
    assert "moby#25526" in text


def test_swarm_publishes_host_network_and_pids() -> None:
    # both families of one port are one ingress port; another port is another
    spec = AppSpec.from_json({"name": "web", "image": "img", "publish": [
        "0.0.0.0:80:8080/udp", "[::]:80:8080/udp", "0.0.0.0:81:8080/udp"]})
    svc = validate_compose(to_swarm(spec))["services"]["web"]
    assert [(p["published"], p["protocol"]) for p in svc["ports"]] == [(80, "udp"), (81, "udp")]
    host = AppSpec.from_json({"name": "api", "image": "img", "publish": "0.0.0.0:8080:8080",
                              "mode": "ebpf", "network": ["host"], "replicas": 2})
    doc = validate_compose(to_swarm(host))
    assert "ports" not in doc["services"]["api"]
    assert doc["services"]["api"]["networks"] == ["hostnet"]
    assert doc["networks"] == {"hostnet": {"external": True, "name": "host"}}
    # limits.pids (stack files 3.9) is newer than the schema Debian's docker-compose ships;
    # the real `docker stack deploy` in tests/e2e/test_export_targets.py takes it.
    pids = AppSpec.from_json({"name": "web", "image": "img", "publish": "80:80",
                              "pids-limit": 100})
    assert yaml.safe_load(to_swarm(pids))["services"]["web"]["deploy"]["resources"] == {
        "limits": {"pids": 100}}



def test_swarm_shm_size_and_groups() -> None:
    """docker stack deploy drops shm_size: a tmpfs at /dev/shm says the same; a stack file
    has no supplementary groups: named in the header."""
    spec = AppSpec.from_json({"name": "web", "image": "img", "publish": "80:80",
                              "shm-size": "96m", "group-add": ["1234"]})
    text = to_swarm(spec)
    svc = validate_compose(text)["services"]["web"]
    assert "shm_size" not in svc and "group_add" not in svc
    assert svc["volumes"] == [{"type": "tmpfs", "target": "/dev/shm",
                               "tmpfs": {"size": 96 << 20}}]
    assert "#   group-add (a stack file has no supplementary groups)\n" in text
