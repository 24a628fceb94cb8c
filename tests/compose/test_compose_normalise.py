"""Keys the reader accepts, read as `docker compose config` (compose-go) normalises them:
env_file's forms and precedence, environment and label scalars as Go prints them,
extra_hosts' separators and forms, long-syntax ports with an IPv6 host_ip, the top-level
`name:`, typed keys written as strings. The compose-go source each rule follows is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lbctl.compose.reader import go_str, read_compose
from lbctl.model import InvalidInput


def app(tmp: Path, service: str, env: dict[str, str] | None = None, top: str = "",
        files: dict[str, str] | None = None) -> dict[str, Any]:
    d = tmp / "proj"
    d.mkdir(exist_ok=True)
    for name, text in (files or {}).items():
        (d / name).write_text(text)
    indented = "\n".join("    " + line for line in service.strip().splitlines())
    p = d / "compose.yaml"
    p.write_text(f"{top}services:\n  web:\n    image: img\n"
                 f"    x-lbctl: {{publish: '127.0.0.1:8080:80'}}\n{indented}\n")
    return read_compose(p, env or {}).apps[0]


def test_env_file_forms_and_precedence(tmp_path: Path) -> None:
    """transform/envfile.go (a path, a list, {path, required, format}) and
    types/project.go WithServicesEnvironmentResolved: an env file's values are interpolated
    from the project's environment, then the service's `environment:`, which wins at the end."""
    files = {"a.env": "A=from-a\nB=${SHELL_V}-${FROM_SVC}\nC=${A}\n", "b.env": "A=from-b\n",
             ".env": "DOT=dot\nDOT2=${DOT}-${SHELL_V}\n"}
    spec = app(tmp_path, """
env_file:
  - a.env
  - {path: b.env, required: true}
  - {path: missing.env, required: false}
environment: {FROM_SVC: svc, C: wins, D: "${DOT2}"}
""", {"SHELL_V": "shell"}, files=files)
    assert spec["env"] == {"A": "from-b", "B": "shell-svc", "C": "wins", "FROM_SVC": "svc",
                           "D": "dot-shell"}
    assert app(tmp_path, "env_file: a.env\n", files=files)["env"]["A"] == "from-a"
    with pytest.raises(InvalidInput, match=r"cannot read .*missing\.env"):
        app(tmp_path, "env_file: [{path: missing.env}]\n")
    with pytest.raises(InvalidInput, match="unsupported env_file format 'raw'"):
        app(tmp_path, "env_file: [{path: a.env, format: raw}]\n")
    with pytest.raises(InvalidInput, match=r"failed to read .*bad.env: line 1: unexpected"):
        app(tmp_path, "env_file: bad.env\n", files={"bad.env": "lol$wut\n"})


def test_scalars_as_go_prints_them(tmp_path: Path) -> None:
    """types/mapping.go mappingValue and types/labels.go labelValue: fmt.Sprint."""
    spec = app(tmp_path, """
environment: {T: true, F: false, I: 5, R: 1.0, E: 1000000.0, S: "x", N: 0.5}
labels: {t: true, n: 2.50, e: null}
""")
    assert spec["env"] == {"T": "true", "F": "false", "I": "5", "R": "1", "E": "1e+06",
                           "S": "x", "N": "0.5"}
    assert spec["label"] == {"t": "true", "n": "2.5", "e": ""}
    assert [go_str(v) for v in (1234567.0, 0.000123, 1e-05, -2.5, 123456.0)] == [
        "1.234567e+06", "0.000123", "1e-05", "-2.5", "123456"]


def test_extra_hosts_forms(tmp_path: Path) -> None:
    """types/hostList.go: `=` or `:`, comma-separated addresses, brackets dropped, a mapping
    of host to one address or a list."""
    spec = app(tmp_path, 'extra_hosts: ["a=10.0.0.1", "b:10.0.0.2", "c=::1", "d=[fd00::1]", '
                         '"e=10.0.0.3,10.0.0.4"]\n')
    assert spec["add-host"] == ["a:10.0.0.1", "b:10.0.0.2", "c:::1", "d:fd00::1", "e:10.0.0.3",
                                "e:10.0.0.4"]
    spec = app(tmp_path, "extra_hosts: {a: 10.0.0.1, b: ['10.0.0.2', '[::1]']}\n")
    assert spec["add-host"] == ["a:10.0.0.1", "b:10.0.0.2", "b:::1"]
    with pytest.raises(InvalidInput, match="missing IP: nohost"):
        app(tmp_path, "extra_hosts: [nohost]\n")


def test_long_ports(tmp_path: Path) -> None:
    """The long syntax: an IPv6 host_ip, published as a number or a string; no host IP is
    every address; a published range or none is refused (lbctl owns a port you choose)."""
    d = tmp_path / "p"
    d.mkdir()
    p = d / "compose.yaml"
    p.write_text("services:\n  web:\n    image: img\n    deploy: {replicas: '${N:-2}'}\n"
                 "    ports:\n"
                 "      - {target: 80, published: 8080, host_ip: '::'}\n"
                 "      - {target: '80', published: '8080', host_ip: 127.0.0.1}\n")
    spec = read_compose(p, {}).apps[0]
    assert spec["publish"] == ["[::]:8080:80/tcp", "127.0.0.1:8080:80/tcp"]
    assert spec["replicas"] == 2  # typed after interpolation, as compose-go casts it
    for bad, message in (("{target: 80}", "name the host port"),
                         ("{target: 80, published: '8080-8081'}", "port ranges")):
        p.write_text("services:\n  web:\n    image: img\n    deploy: {replicas: 2}\n"
                     f"    ports: [{bad}]\n")
        with pytest.raises(InvalidInput, match=message):
            read_compose(p, {})


def test_top_level_name_is_the_project(tmp_path: Path) -> None:
    """The project's name: COMPOSE_PROJECT_NAME, then `name:`, then the directory."""
    service = "volumes: [data:/data]\n"
    top_vols = "volumes: {data: {}}\n"
    d = tmp_path / "proj"
    d.mkdir()
    p = d / "compose.yaml"
    p.write_text(f"name: Shop\n{top_vols}services:\n  web:\n    image: img\n"
                 f"    x-lbctl: {{publish: '127.0.0.1:8080:80'}}\n    {service}")
    assert read_compose(p, {}).project == "shop"
    assert read_compose(p, {}).apps[0]["volume"] == ["shop_data:/data"]
    assert read_compose(p, {"COMPOSE_PROJECT_NAME": "other"}).project == "other"
