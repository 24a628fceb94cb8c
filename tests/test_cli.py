"""CLI pieces that need no daemon: the status table, argument errors, TOML validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lbctl.cli import parse_targets as _parse_targets
from lbctl.cli import render_table
from lbctl.cli import specs_from_toml as _specs_from_toml
from lbctl.model import InvalidInput


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
    dual = {**_app(1), "publishes": ["0.0.0.0:80:8080/tcp", "[::]:80:8080/tcp"]}
    assert "web  ebpf  0.0.0.0:80:8080/tcp,[::]:80:8080/tcp  1/1 ready" in render_table([dual])
