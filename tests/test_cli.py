"""CLI pieces that need no daemon: the status table, argument errors, TOML validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lbctl.cli import parse_targets as _parse_targets
from lbctl.cli import render_table
from lbctl.cli import specs_from_toml as _specs_from_toml
from lbctl.model import AppSpec, InvalidInput


def _app(n: int) -> dict[str, object]:
    return {
        "name": "web", "mode": "ebpf", "publish": "127.0.0.1:8080:8080/tcp", "desired": n,
        "ready": n, "error": None,
        "replicas": [
            {"name": f"web-{i}", "state": "ready", "connections_total": 1000 * i,
             "uptime_seconds": 3600.0 * i, "adopted": i == n, "container_id": "x"}
            for i in range(1, n + 1)
        ],
    }


def test_table_fits_80_columns_and_shows_shares() -> None:
    out = render_table([_app(3)])
    print(out)
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "web  ebpf  127.0.0.1:8080:8080/tcp  3/3 ready" in out
    assert "17%" in out and "33%" in out and "50%" in out
    assert "web-3 *" in out and "adopted" in out


def test_table_without_apps() -> None:
    assert "no apps" in render_table([])


def test_scale_targets() -> None:
    assert _parse_targets(["a=1", "b=0"]) == {"a": 1, "b": 0}
    for bad in (["a=-1"], ["a=x"], ["=3"], ["a"], ["a=1", "a=2"], ["A=1"]):
        with pytest.raises(InvalidInput):
            _parse_targets(bad)


def test_toml(tmp_path: Path) -> None:
    good = tmp_path / "apps.toml"
    good.write_text(
        '[[app]]\nname = "web"\nimage = "lbctl/demo"\npublish = "8080:8080"\nreplicas = 3\n'
        'env = { A = "1" }\n\n'
        '[[app]]\nname = "api"\nimage = "lbctl/demo"\npublish = "8081:8080"\nmode = "iptables"\n'
    )
    specs = _specs_from_toml(good)
    assert [s["name"] for s in specs] == ["web", "api"]
    for text in ("[[app]\n", "x = 1\n", '[[app]]\nname = "web"\n',
                 '[[app]]\nname="a"\nimage="i"\npublish="1:1"\n[[app]]\nname="a"\nimage="i"\n'
                 'publish="2:1"\n'):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(InvalidInput):
            _specs_from_toml(bad)


@pytest.mark.parametrize(
    "args",
    [["scale"], ["run", "web"], ["status", "-o", "yaml"], ["frobnicate"],
     ["scale", "web=1", "--", "x"]],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "lbctl", *args], capture_output=True, text=True,
                       check=False, env={"LBCTL_SOCKET": str(tmp_path / "x.sock"),
                                         "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_version() -> None:
    r = subprocess.run([sys.executable, "-m", "lbctl", "--version"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and r.stdout.startswith("lbctl ")


def test_publish_repeated_and_in_brackets() -> None:
    from lbctl.cli.inputs import spec_from_run
    from lbctl.cli.parser import build_parser

    def body(*publish: str) -> dict[str, object]:
        flags = [x for p in publish for x in ("-p", p)]
        args = build_parser().parse_args(["run", "web", "--image", "x", *flags])
        return spec_from_run(args, [])

    assert body("8080:80")["publish"] == "127.0.0.1:8080:80/tcp"  # one stays a string
    assert body("0.0.0.0:80:8080", "[::]:80:8080")["publish"] == [
        "0.0.0.0:80:8080/tcp", "[::]:80:8080/tcp"]
    with pytest.raises(InvalidInput, match="overlaps"):
        body("0.0.0.0:80:8080", "127.0.0.1:80:8080")
    # Repeated -p beside docker run's options: both reach the spec.
    flags = ["-p", "0.0.0.0:80:8080", "--network", "dual", "-p", "[::]:80:8080", "-m", "64m"]
    data = spec_from_run(build_parser().parse_args(["run", "web", "--image", "x", *flags]), [])
    both = AppSpec.from_json(data)
    assert [str(p) for p in both.publishes] == ["0.0.0.0:80:8080/tcp", "[::]:80:8080/tcp"]
    assert both.options.network == ("dual",) and both.options.memory == "64m"
    dual = {**_app(1), "publishes": ["0.0.0.0:80:8080/tcp", "[::]:80:8080/tcp"]}
    assert "web  ebpf  0.0.0.0:80:8080/tcp,[::]:80:8080/tcp  1/1 ready" in render_table([dual])


def _run_args(*extra: str) -> list[str]:
    return ["run", "web", "--image", "lbctl/demo", "-p", "8080:8080", *extra]


def test_docker_run_options_on_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbctl.cli.inputs import spec_from_run
    from lbctl.cli.parser import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "web.env").write_text("# docker's format\nFROM_FILE=1\nA=file\n")
    args = build_parser().parse_args(_run_args(
        "-v", "data:/data", "-v", "./conf:/etc/conf:ro", "--mount", "type=tmpfs,dst=/t",
        "--network", "backend", "--network", "front", "-m", "512m", "--cpus", "0.5",
        "--pids-limit", "64", "-u", "1000", "-w", "/data", "-l", "team=web",
        "--env-file", "web.env", "-e", "A=flag", "--entrypoint", "/httpd",
        "--health-cmd", '["/httpd", "--check"]', "--health-interval", "1s",
        "--health-timeout", "1s", "--health-retries", "2", "--health-start-period", "2s",
        "--read-only", "--tmpfs", "/run", "--cap-drop", "ALL", "--cap-add", "CHOWN",
        "--ulimit", "nofile=1024:2048", "--stop-signal", "SIGINT", "--stop-timeout", "3",
        "--log-driver", "local", "--log-opt", "max-size=1m", "--init",
        "--add-host", "db2:10.0.0.5", "--dns", "10.0.0.53"))
    data = spec_from_run(args, [])
    assert data["env"] == {"FROM_FILE": "1", "A": "flag"}  # -e wins over --env-file
    assert data["volume"] == ["data:/data", f"{tmp_path}/conf:/etc/conf:ro"]
    assert data["health-cmd"] == ["/httpd", "--check"]  # JSON list: the exec form
    assert data["entrypoint"] == ["/httpd"] and data["read-only"] is True
    assert data["label"] == {"team": "web"} and data["log-opt"] == {"max-size": "1m"}
    spec = AppSpec.from_json(data)
    assert spec.options.memory == "512m" and spec.options.network == ("backend", "front")
    assert spec.options.health_cmd == ("/httpd", "--check")
    shell = build_parser().parse_args(_run_args("--health-cmd", "curl -f localhost"))
    assert spec_from_run(shell, [])["health-cmd"] == "curl -f localhost"


def test_update_changes_only_what_is_given() -> None:
    from lbctl.cli.inputs import update_from_args
    from lbctl.cli.parser import build_parser

    args = build_parser().parse_args(["update", "web", "--memory", "1g", "--unset", "cpus",
                                      "--unset", "volume"])
    assert update_from_args(args, []) == {"memory": "1g", "unset": ["cpus", "volume"]}
    for bad in (["--unset", "image"], ["--memory", "1g", "--unset", "memory"],
                ["--memory", "lots"]):
        with pytest.raises(InvalidInput):
            update_from_args(build_parser().parse_args(["update", "web", *bad]), [])


@pytest.mark.parametrize("args", [
    _run_args("--privileged"), _run_args("-d"), _run_args("--restart", "always"),
    ["update", "web", "--gpus", "all"], _run_args("--memory", "1k"),
    _run_args("--network", "host", "--mode", "iptables"),
    _run_args("--activation", "--mode", "iptables"), _run_args("--label", "lbctl.app=x"),
    _run_args("--env-file", "/nonexistent/web.env"), _run_args("--pids-limit", "x"),
    # Found by the audit (a traceback or a 500 before): values past int64, a signal that
    # does not exist, a mount on /, a scoped address, thousands of digits (NUL, which no
    # argv holds: tests/model/test_hostile_values.py).
    ["scale", "web=" + "9" * 5000], _run_args("--pids-limit", "9" * 5000),
    _run_args("--memory", "9" * 400), _run_args("--tmpfs", "/x:size=" + "9" * 400),
    _run_args("--ulimit", "nofile=" + "9" * 30), _run_args("--stop-signal", "SIGFOO"),
    _run_args("-v", "data:/"), _run_args("--dns", "fe80::1%eth0"),
    _run_args("--replicas", "9" * 5000),
])
def test_unsupported_or_bad_options_are_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "lbctl", *args], capture_output=True, text=True,
                       check=False, env={"LBCTL_SOCKET": str(tmp_path / "x.sock"),
                                         "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert len(r.stderr) < 600, r.stderr
    if args[-1] in ("--privileged", "-d"):
        assert f"{args[-1]}: not an option" in r.stderr, r.stderr


def test_toml_takes_options_and_env_files(tmp_path: Path) -> None:
    from lbctl.cli.inputs import read_apps_file

    (tmp_path / "web.env").write_text("A=from-file\nB=from-file\n")
    f = tmp_path / "apps.toml"
    f.write_text('[[app]]\nname = "web"\nimage = "lbctl/demo"\npublish = "8080:8080"\n'
                 'env-file = "web.env"\nenv = { B = "table" }\nvolume = ["./conf:/c:ro"]\n'
                 'memory = "64m"\npids-limit = 10\nhealth-cmd = ["/httpd", "--check"]\n')
    got = read_apps_file(f)
    [app] = got.apps
    assert app["env"] == {"A": "from-file", "B": "table"} and "env-file" not in app
    assert app["volume"] == [f"{tmp_path}/conf:/c:ro"]
    assert got.body() == {"apps": [app]}
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  web:\n    image: lbctl/demo\n"
                       "    x-lbctl: {publish: '8080:8080'}\n  db:\n    image: postgres\n")
    got = read_apps_file(compose)
    assert [a["name"] for a in got.apps] == ["web"] and got.skipped == ["db"]
    assert set(got.body()) == {"apps", "networks"}  # the project's default network


def test_table_names_an_adopted_container_outside_the_namespace() -> None:
    app = _app(2)
    app["replicas"][1]["note"] = ("not in the app's namespace: give it network_mode: "  # type: ignore[index]
                                  "container:some-long-app-name-sandbox")
    out = render_table([app])
    assert "  web-2:\n    not in the app's namespace: give it network_mode:" in out
    assert "container:some-long-app-name-sandbox" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_table_names_whoever_took_the_host_port() -> None:
    app = _app(1)
    app["port_conflict"] = ("port 127.0.0.1:8080/tcp is also bound by pid 4242 (python3), "
                            "which gets none of its traffic (lbctl's rule sends it to this app)")
    out = render_table([app])
    print(out)
    assert ("  warning: port 127.0.0.1:8080/tcp is also bound by pid 4242 (python3), which\n"
            "    gets none of its traffic") in out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "warning" not in render_table([_app(1)])


@pytest.mark.parametrize("args, code, words", [
    (["--max-apps", "-1"], 2, "must not be negative"),
    (["--default-pids-limit", "-5"], 2, "must not be negative"),
    (["--policy", "/nonexistent/policy.toml"], 1, "policy file /nonexistent/policy.toml does "
                                                  "not exist"),
])
def test_daemon_limits_and_policy_are_checked_before_it_starts(
    args: list[str], code: int, words: str, tmp_path: Path,
) -> None:
    """One line and nothing started: no socket, no state dir."""
    r = subprocess.run([sys.executable, "-m", "lbctl", "daemon", "--socket",
                        str(tmp_path / "x.sock"), "--state-dir", str(tmp_path / "state"), *args],
                       capture_output=True, text=True, check=False, timeout=30)
    assert r.returncode == code and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "x.sock").exists() and not (tmp_path / "state").exists()
