"""A compose file as lbctl apps: compose's meaning for every key lbctl reads, a refusal by
name for every key it cannot honour, and `lbctl export --format compose` read back as the
same spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lbctl.compose.reader import is_compose, project_name, read_compose
from lbctl.export import to_compose
from lbctl.model import AppSpec, InvalidInput

WEB = """
services:
  web:
    image: lbctl/demo:${TAG:-latest}
    x-lbctl: {publish: "127.0.0.1:${PORT:?set PORT}:8080", mode: ebpf}
    deploy:
      replicas: 3
      resources: {limits: {memory: 256m, cpus: "0.5", pids: 64}}
      update_config: {parallelism: 2, delay: 1s, order: stop-first, failure_action: pause}
    volumes:
      - data:/data
      - ./conf/app.conf:/etc/app.conf:ro
      - /anon
      - {type: tmpfs, target: /scratch, tmpfs: {size: 16m}}
      - {type: bind, source: ./srv, target: /srv, read_only: true}
      - {type: volume, source: cache, target: /cache, volume: {nocopy: true}}
    networks: [backend]
    environment:
      A: "1"
      FROM_SHELL:
      LITERAL: "$$HOME"
      NUM: 5
    env_file: web.env
    healthcheck:
      test: ["CMD", "/httpd", "--check"]
      interval: 1m30s
      timeout: 2s
      retries: 3
      start_period: 5s
    stop_grace_period: 1500ms
    stop_signal: SIGINT
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    logging: {driver: json-file, options: {max-size: 10m}}
    extra_hosts: ["db2:10.0.0.5"]
    dns: 10.0.0.53
    tmpfs: /run
    cap_add: [NET_BIND_SERVICE]
    cap_drop: [ALL]
    labels: [team=web]
    user: "1000:1000"
    working_dir: /data
    entrypoint: /httpd --quiet
    command: ["--x"]
    init: true
    read_only: true
    restart: unless-stopped
    profiles: [lbctl]
  db:
    image: postgres
    networks: [backend]
    depends_on: [other]
volumes:
  data: {}
  cache: {external: true}
networks:
  backend: {}
"""


def write(tmp: Path, text: str, name: str = "compose.yaml", env: str | None = None) -> Path:
    d = tmp / "My-Proj"
    d.mkdir(exist_ok=True)
    (d / "web.env").write_text("FROM_FILE=yes\nA=overridden-by-environment\n")
    if env is not None:
        (d / ".env").write_text(env)
    p = d / name
    p.write_text(text)
    return p


def test_every_key_with_composes_meaning(tmp_path: Path) -> None:
    p = write(tmp_path, WEB, env="PORT=9000\nTAG=from-dotenv\n")
    got = read_compose(p, {"TAG": "1.2", "FROM_SHELL": "shell"})
    d = str(p.parent)
    assert got.project == "my-proj"  # the directory's name, as docker-compose makes it
    assert got.skipped == ["db"]  # compose's own: not an lbctl app
    assert got.volumes == {"my-proj_data": {"com.docker.compose.project": "my-proj",
                                            "com.docker.compose.volume": "data"}}
    assert got.networks == {"my-proj_backend": {"com.docker.compose.project": "my-proj",
                                                "com.docker.compose.network": "backend"}}
    [app] = got.apps
    assert app == {
        "name": "web",
        "image": "lbctl/demo:1.2",  # the shell's environment wins over .env
        "publish": "127.0.0.1:9000:8080/tcp",
        "replicas": 3,
        "mode": "ebpf",
        "update": {"parallelism": 2, "delay": 1.0, "order": "stop-first",
                   "failure_action": "pause"},
        "env": {"FROM_FILE": "yes", "A": "1", "FROM_SHELL": "shell", "LITERAL": "$HOME",
                "NUM": "5"},
        "command": ["--x"],
        "entrypoint": ["/httpd", "--quiet"],
        "volume": ["my-proj_data:/data", f"{d}/conf/app.conf:/etc/app.conf:ro", "/anon"],
        "mount": ["type=tmpfs,target=/scratch,tmpfs-size=16m",
                  f"type=bind,source={d}/srv,target=/srv,readonly",
                  "type=volume,source=cache,target=/cache,volume-nocopy=true"],
        "tmpfs": ["/run"],
        "network": ["my-proj_backend"],
        "add-host": ["db2:10.0.0.5"],
        "dns": ["10.0.0.53"],
        "memory": "256m", "cpus": 0.5, "pids-limit": 64,
        "ulimit": ["nofile=1024:2048", "nproc=512"],
        "user": "1000:1000", "workdir": "/data", "stop-signal": "SIGINT",
        "label": {"team": "web"},
        "health-cmd": ["/httpd", "--check"], "health-interval": "1m30s",
        "health-timeout": "2s", "health-start-period": "5s", "health-retries": 3,
        "read-only": True, "init": True,
        "cap-add": ["NET_BIND_SERVICE"], "cap-drop": ["ALL"],
        "stop-timeout": 2,  # 1.5 s, rounded up: never less time than the file gives
        "log-driver": "json-file", "log-opt": {"max-size": "10m"},
    }
    AppSpec.from_json(app)  # and the daemon takes it


def test_shm_size_and_group_add_with_composes_meaning(tmp_path: Path) -> None:
    """shm_size: a size, or a number of bytes; group_add: names and numbers (YAML's)."""
    p = write(tmp_path, "services:\n  web:\n    image: i\n    x-lbctl: {publish: '1:1'}\n"
                        "    shm_size: 96m\n    group_add: [1234, audio]\n"
                        "    network_mode: bridge\n")
    [app] = read_compose(p, {}).apps
    assert (app["shm-size"], app["group-add"]) == ("96m", ["1234", "audio"])
    spec = AppSpec.from_json(app)
    assert spec.options.shm_size == "96m" and spec.options.group_add == ("1234", "audio")
    svc = yaml.safe_load(to_compose(spec))["services"]["web"]
    assert (svc["shm_size"], svc["group_add"]) == ("96m", ["1234", "audio"])
    p = write(tmp_path, "services:\n  web:\n    image: i\n    x-lbctl: {publish: '1:1'}\n"
                        "    shm_size: 100663296\n    group_add: [{gid: 1}]\n")
    with pytest.raises(InvalidInput, match=r"services\.web\.group_add"):
        read_compose(p, {})


def test_ports_with_replicas_is_an_app_and_default_network(tmp_path: Path) -> None:
    p = write(tmp_path, "services:\n  api:\n    image: lbctl/demo\n    ports: ['8081:8080']\n"
                        "    deploy: {replicas: 2}\n")
    [app] = read_compose(p, {}).apps
    # compose's meaning: no host IP is every address; the project's default network
    assert app["publish"] == "0.0.0.0:8081:8080/tcp" and app["replicas"] == 2
    assert app["network"] == ["my-proj_default"]
    long_form = write(tmp_path, "services:\n  api:\n    image: i\n    ports: [{target: 8080, "
                                "published: 8081, host_ip: 127.0.0.1, protocol: udp}]\n"
                                "    deploy: {replicas: 2}\n    network_mode: bridge\n")
    [app] = read_compose(long_form, {"COMPOSE_PROJECT_NAME": "Other"}).apps
    assert app["publish"] == "127.0.0.1:8081:8080/udp" and "network" not in app


def test_several_ports_of_one_container_port_are_the_apps_publishes(tmp_path: Path) -> None:
    p = write(tmp_path, "services:\n  api:\n    image: i\n    ports: ['127.0.0.1:8081:8080', "
                        "'[::]:8081:8080']\n    deploy: {replicas: 2}\n    network_mode: bridge\n")
    [app] = read_compose(p, {}).apps
    assert app["publish"] == ["127.0.0.1:8081:8080/tcp", "[::]:8081:8080/tcp"]
    listed = write(tmp_path, "services:\n  api:\n    image: i\n    ports: ['8081:8080']\n"
                             "    x-lbctl: {publish: ['0.0.0.0:8081:8080', '[::]:8081:8080']}\n")
    [app] = read_compose(listed, {}).apps
    assert app["publish"] == ["0.0.0.0:8081:8080/tcp", "[::]:8081:8080/tcp"]


@pytest.mark.parametrize(("service", "named"), [
    ("privileged: true", "services.web.privileged"),
    ("container_name: x", "services.web.container_name"),
    ("depends_on: [db]", "services.web.depends_on"),
    ("network_mode: none", "services.web.network_mode"),
    ("networks: {backend: {aliases: [x]}}", "services.web.networks.backend.aliases"),
    ("deploy: {placement: {}}", "services.web.deploy.placement"),
    ("deploy: {resources: {reservations: {memory: 1m}}}",
     "services.web.deploy.resources.reservations"),
    ("healthcheck: {disable: true}", "services.web.healthcheck.disable"),
    ("logging: {driver: local, format: x}", "services.web.logging.format"),
    ("volumes: [{type: bind, source: /a, target: /b, consistency: cached}]",
     "services.web.volumes.consistency"),
    ("volumes: [undeclared:/x]", "named volume 'undeclared'"),
    ("networks: [undeclared]", "network 'undeclared'"),
    ("restart: 'no'", "services.web.restart"),
    ("mem_limit: 1g\n    deploy: {resources: {limits: {memory: 2g}}}", "differ"),
    ("expose: ['9999']", "services.web.expose"),
    ("ports: ['1:2', '3:4']", "services.web.ports"),
    ("ports: [22:22]", "quote ports"),
    ("x-lbctl: {publish: '8080:8080', bogus: 1}", "x-lbctl.bogus"),
])
def test_unsupported_keys_are_refused_by_name(tmp_path: Path, service: str, named: str) -> None:
    text = ("services:\n  web:\n    image: i\n    x-lbctl: {publish: '8080:8080'}\n"
            f"    {service}\n")
    if service.startswith(("ports", "x-lbctl")):
        text = f"services:\n  web:\n    image: i\n    deploy: {{replicas: 1}}\n    {service}\n"
    p = write(tmp_path, text + "networks: {backend: {}}\n")
    with pytest.raises(InvalidInput) as e:
        read_compose(p, {})
    assert named in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(("top", "named"), [
    ("configs: {}", "configs"), ("secrets: {}", "secrets"),
    ("volumes: {data: {driver_opts: {}}}", "volumes.data.driver_opts"),
    ("networks: {n: {driver: overlay}}", "networks.n.driver"),
    ("networks: {n: {internal: true}}", "networks.n.internal"),
])
def test_unsupported_top_level_keys_are_refused_by_name(
    tmp_path: Path, top: str, named: str
) -> None:
    svc = "    volumes: [data:/d]\n" if "data" in top else "    networks: [n]\n" if (
        "networks" in top) else ""
    p = write(tmp_path, "services:\n  web:\n    image: i\n    x-lbctl: {publish: '1:1'}\n"
                        f"{svc}{top}\n")
    with pytest.raises(InvalidInput, match=named):
        read_compose(p, {})


def test_files_without_apps_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no service is an lbctl app"):
        read_compose(write(tmp_path, "services:\n  db:\n    image: postgres\n"), {})
    with pytest.raises(InvalidInput, match="not valid YAML"):
        read_compose(write(tmp_path, "services: [\n"), {})
    with pytest.raises(InvalidInput, match="required variable PORT is missing a value: set PORT"):
        read_compose(write(tmp_path, WEB), {})
    with pytest.raises(InvalidInput, match="cannot read"):
        read_compose(tmp_path / "missing.yaml", {})


def test_detection_and_project_names(tmp_path: Path) -> None:
    assert is_compose(Path("x.yml"), "") and is_compose(Path("x.yaml"), "")
    assert not is_compose(Path("x.toml"), "services:\n")
    assert is_compose(Path("compose"), "version: '3'\nservices:\n  a: {}\n")
    assert not is_compose(Path("apps"), '[[app]]\nname = "a"\n')
    assert project_name(Path("/x/My App_1"), {}) == "myapp_1"
    assert project_name(Path("/x/y"), {"COMPOSE_PROJECT_NAME": "Demo"}) == "demo"


SPECS: list[dict[str, Any]] = [
    {"name": "web", "image": "lbctl/demo", "publish": "127.0.0.1:8080:8080", "replicas": 2},
    {"name": "web", "image": "lbctl/demo", "publish": "0.0.0.0:80:8080/udp", "mode": "ebpf",
     "env": {"GREETING": "yes", "PORTS": "8080:80"}, "command": ["a b", "c"],
     "update": {"parallelism": 2, "monitor": 1.0, "max_unavailable": 1, "ready_timeout": 9},
     "volume": ["data:/data", "/etc/a.conf:/etc/a.conf:ro", "/anon"],
     "mount": ["type=tmpfs,target=/s,tmpfs-size=16m,tmpfs-mode=1777",
               "type=volume,source=v2,target=/v2,volume-nocopy",
               "type=bind,source=/tmp,target=/h,readonly,bind-propagation=rslave"],
     "tmpfs": ["/run:size=1m"], "network": ["backend", "front"],
     "add-host": ["db2:10.0.0.5"], "dns": ["10.0.0.53"], "memory": "512m", "cpus": 0.5,
     "pids-limit": 100, "ulimit": ["nofile=1024:2048", "nproc=100"], "user": "1000",
     "workdir": "/data", "entrypoint": ["/httpd"], "label": {"team": "web"},
     "health-cmd": ["/httpd", "--check"], "health-interval": "1s", "health-timeout": "2s",
     "health-retries": 3, "health-start-period": "1m30s", "read-only": True,
     "cap-add": ["NET_ADMIN"], "cap-drop": ["ALL"], "stop-signal": "SIGINT",
     "stop-timeout": 3, "log-driver": "json-file", "log-opt": {"max-size": "1m"},
     "init": True, "shm-size": "96m", "group-add": ["1234", "audio"]},
    {"name": "dual", "image": "lbctl/demo", "publish": ["0.0.0.0:80:8080", "[::]:80:8080"],
     "network": ["dual"], "update": {"parallelism": 2}},
    {"name": "sh", "image": "busybox", "publish": "9000:9000",
     "health-cmd": "wget -q -O- localhost:9000", "log-opt": {"max-file": "2"},
     "network": ["bridge"]},
    {"name": "fast", "image": "lbctl/demo", "publish": "0.0.0.0:9100:9100", "mode": "ebpf",
     "network": ["host"], "replicas": 3},
]


@pytest.mark.parametrize("data", SPECS)
def test_export_then_apply_gives_the_same_spec(tmp_path: Path, data: dict[str, Any]) -> None:
    spec = AppSpec.from_json(data)
    text = to_compose(spec)
    yaml.safe_load(text)
    p = write(tmp_path, text, "exported.yml")
    got = read_compose(p, {})
    assert [AppSpec.from_json(a) for a in got.apps] == [spec]
