"""docker run's options as the engine's create JSON: the same fields `docker run` sends."""

from __future__ import annotations

from lbctl.model import AppSpec
from lbctl.model.options import RunOptions
from lbctl.runtime.convert import target_network, to_container
from lbctl.runtime.options import create_config, merge_ulimits


def opts(**kw: object) -> RunOptions:
    return AppSpec.from_json({"name": "w", "image": "i", "publish": "1:1", **kw}).options


def test_nothing_given_adds_nothing() -> None:
    assert create_config(RunOptions()) == ({}, {})


def test_every_option_lands_where_docker_run_puts_it() -> None:
    config, host = create_config(opts(
        volume=["data:/data", "/etc/a.conf:/etc/a.conf:ro", "/anon"],
        mount=["type=bind,source=/srv,target=/srv,readonly,bind-propagation=rslave",
               "type=volume,source=cache,target=/cache,volume-nocopy",
               "type=tmpfs,target=/scratch,tmpfs-size=16m,tmpfs-mode=1777"],
        tmpfs=["/run:size=1m"], **{"add-host": ["db2:10.0.0.5"]}, dns=["10.0.0.53"],
        memory="512m", cpus=1.5, **{"pids-limit": 100}, ulimit=["nofile=1024:2048"],
        user="1000:1000", workdir="/data", entrypoint=["/httpd"], label={"team": "web"},
        **{"health-cmd": "curl -f localhost", "health-interval": "1m30s",
           "health-timeout": "500ms", "health-retries": 2, "health-start-period": "5s",
           "read-only": True, "cap-add": ["NET_ADMIN"], "cap-drop": ["ALL"],
           "stop-signal": "SIGINT", "stop-timeout": 20, "log-driver": "local",
           "log-opt": {"max-size": "10m"}}, init=True,
    ))
    assert host["Binds"] == ["data:/data", "/etc/a.conf:/etc/a.conf:ro"]
    assert config["Volumes"] == {"/anon": {}}
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/srv", "Target": "/srv", "ReadOnly": True,
         "BindOptions": {"Propagation": "rslave"}},
        {"Type": "volume", "Source": "cache", "Target": "/cache", "ReadOnly": False,
         "VolumeOptions": {"NoCopy": True}},
        {"Type": "tmpfs", "Target": "/scratch", "ReadOnly": False,
         "TmpfsOptions": {"SizeBytes": 16 << 20, "Mode": 0o1777}},
    ]
    assert host["Tmpfs"] == {"/run": "size=1m"}
    assert host["ExtraHosts"] == ["db2:10.0.0.5"] and host["Dns"] == ["10.0.0.53"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (
        512 << 20, 1_500_000_000, 100)
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert (config["User"], config["WorkingDir"], config["Entrypoint"]) == (
        "1000:1000", "/data", ["/httpd"])
    assert config["Labels"] == {"team": "web"}
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 90_000_000_000,
        "Timeout": 500_000_000, "StartPeriod": 5_000_000_000, "Retries": 2}
    assert host["ReadonlyRootfs"] is True and host["Init"] is True
    assert (host["CapAdd"], host["CapDrop"]) == (["NET_ADMIN"], ["ALL"])
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGINT", 20)
    assert host["LogConfig"] == {"Type": "local", "Config": {"max-size": "10m"}}


def test_exec_form_health_check_and_partial_overrides() -> None:
    config, _ = create_config(opts(**{"health-cmd": ["/httpd", "--check"]}))
    assert config["Healthcheck"] == {"Test": ["CMD", "/httpd", "--check"]}
    # Only an interval: the image's test stays (the engine merges an empty Test).
    config, _ = create_config(opts(**{"health-interval": "2s"}))
    assert config["Healthcheck"] == {"Interval": 2_000_000_000}


def test_podman_default_ulimits_stay_under_the_apps_own() -> None:
    defaults = [{"Name": "nofile", "Soft": 1, "Hard": 2}, {"Name": "nproc", "Soft": 3, "Hard": 4}]
    given = [{"Name": "nofile", "Soft": 10, "Hard": 20}]
    assert merge_ulimits(defaults, given) == [defaults[1], given[0]]
    assert merge_ulimits(defaults, []) == defaults


def _inspect(networks: dict[str, str], label: str | None) -> dict[str, object]:
    labels = {"lbctl.app": "w"}
    if label:
        labels["lbctl.network"] = label
    return {
        "Id": "c1", "Name": "/w-1", "Config": {"Labels": labels, "StopTimeout": 7},
        "State": {"Running": True, "Pid": 5},
        "HostConfig": {"NetworkMode": "alpha"},
        "NetworkSettings": {"Networks": {
            n: {"NetworkID": f"id-{n}", "IPAddress": ip} for n, ip in networks.items()}},
    }


def test_the_dnat_target_is_the_labelled_network_not_the_first_listed() -> None:
    """The engine lists networks by name; the replica's address is the one on the network
    lbctl created it for (its first), recorded in its lbctl.network label."""
    d = _inspect({"alpha": "10.1.0.2", "zeta": "10.2.0.2"}, "zeta")
    assert target_network(d) == ("zeta", "id-zeta", "10.2.0.2")
    c = to_container(d, "br-zeta")
    assert c.ip == "10.2.0.2" and c.stop_timeout == 7
    # Not (yet) on its network: no address rather than a wrong one.
    assert to_container(_inspect({"alpha": "10.1.0.2"}, "zeta"), None).ip is None
    # Adopted containers (no label): the first network with an address, as before.
    assert to_container(_inspect({"alpha": "10.1.0.2"}, None), None).ip == "10.1.0.2"
