#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# `make setup`: everything lbctl needs on a fresh Debian 12 machine, as root.
# Idempotent, and quiet when there is nothing to do: each step checks first
# and prints one line only when it changes something.  CI runs this on a
# machine where nothing was installed by hand, so it must not rely on any.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# LBCTL_ENGINE=podman (`make setup ENGINE=podman`; `make test` sets it): Podman too, beside
# Docker (lbctl's images are built with Docker and loaded into Podman's store).
with_podman=0
[[ ${LBCTL_ENGINE:-docker} == podman ]] && with_podman=1

say() { echo "setup: $*"; }
fail() { echo "setup: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || fail "must run as root (it installs packages and starts dockerd)"

# --- 1. System packages ----------------------------------------------------
arch=$(dpkg --print-architecture)
packages=(
    docker.io iptables conntrack python3-bpfcc bpfcc-tools "linux-headers-$arch"
    wrk curl busybox-static python3-venv gcc libc6-dev nginx-light haproxy prometheus
    procps iproute2 docker-compose lintian dpkg-dev
)
if [[ $with_podman == 1 ]]; then packages+=(podman); fi
missing=()
for p in "${packages[@]}"; do
    # "ii" = installed and configured; anything else (absent, half-installed)
    # is installed again.
    if [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) != "ii "* ]]; then
        # A Docker engine from elsewhere (docker-ce) would conflict with
        # docker.io; any working dockerd will do.
        if [[ $p == docker.io ]] && command -v dockerd >/dev/null; then
            continue
        fi
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    # nginx, haproxy, prometheus and docker.io try to start their services in
    # postinst.  Without systemd as PID 1 that fails and can fail the whole
    # install; policy-rc.d exiting 101 tells invoke-rc.d not to start them.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# lbctl setup: no service starts during apt-get install\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    cleanup_apt() {
        rm -f "$apt_log"
        if [[ $made_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    }
    trap cleanup_apt EXIT
    apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold)
    if ! apt-get "${apt_opts[@]}" update >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        fail "apt-get update failed"
    fi
    if ! apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" \
            >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        fail "apt-get install ${missing[*]} failed"
    fi
    cleanup_apt
    trap - EXIT
fi

# --- 2. Kernel header tree for bcc -------------------------------------------
# This kernel ships no headers.  bcc needs /lib/modules/$(uname -r)/build; a
# program that only uses uapi types compiles against Debian's generic
# linux-headers tree (its -common part is the `source`).
kver=$(uname -r)
moddir=/lib/modules/$kver
if [[ ! -e $moddir/build ]]; then
    hdr=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n $hdr ]] || fail "no /usr/src/linux-headers-*-$arch tree (linux-headers-$arch missing?)"
    common=${hdr%-"$arch"}-common
    mkdir -p "$moddir"
    ln -sfn "$hdr" "$moddir/build"
    if [[ -d $common ]]; then ln -sfn "$common" "$moddir/source"; fi
    say "linked $moddir/build -> $hdr"
elif [[ ! -e $moddir/source ]]; then
    hdr=$(readlink -f "$moddir/build")
    common=${hdr%-"$arch"}-common
    if [[ -d $common && $common != "$hdr" ]]; then
        ln -sfn "$common" "$moddir/source"
        say "linked $moddir/source -> $common"
    fi
fi

# --- 3. Docker engine ------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    # A dockerd may be starting already (another setup, a previous run): then only wait
    # for it. One may also be on its way out (stopped a moment ago, still stopping its
    # containers): once it is gone, start ours, or this would wait for an engine that never
    # answers.
    started=0
    for _ in $(seq 240); do
        docker info >/dev/null 2>&1 && break
        if ! pgrep -x dockerd >/dev/null; then
            say "starting dockerd (log: /var/log/lbctl-dockerd.log)"
            # setsid + nohup: the engine must outlive make and this shell.
            setsid nohup dockerd >>/var/log/lbctl-dockerd.log 2>&1 </dev/null &
            started=1
        elif [[ $started == 0 ]]; then
            say "waiting for the running dockerd"
            started=2
        fi
        sleep 0.5
    done
    docker info >/dev/null 2>&1 ||
        fail "the Docker engine did not answer within 120 s; see /var/log/lbctl-dockerd.log"
fi

# --- 4. Group of the control socket (root:lbctl 0660) ------------------------
if ! getent group lbctl >/dev/null; then
    groupadd --system lbctl
    say "created system group lbctl"
fi

# What members of that group may ask for: /etc/lbctl/policy.toml is the package's (a conffile),
# and the daemon uses the same values when it is absent (tests/controller/test_policy_rules.py),
# so this setup writes none. It removes one an earlier setup wrote, left unedited (byte for
# byte a version of etc/policy.toml in this repository's history, owned by no package):
# installing the package later would otherwise stop to ask whose the file is.
pol=/etc/lbctl/policy.toml
if [[ -f $pol ]] && ! dpkg -S "$pol" >/dev/null 2>&1; then
    blob=$(git -C "$REPO" hash-object "$pol" 2>/dev/null || true)
    if [[ -n $blob ]] && git -C "$REPO" log --format= --raw --abbrev=40 -- etc/policy.toml \
            2>/dev/null | awk '{print $4}' | grep -qx "$blob"; then
        rm -f "$pol"
        rmdir --ignore-fail-on-non-empty /etc/lbctl
        say "removed $pol, as an earlier make setup wrote it: the package owns it now" \
            "(the daemon's built-in policy is the same)"
    fi
fi

# --- 5. Python venv ----------------------------------------------------------
# Debian's python3, not whatever python3 is first on PATH: python3-bpfcc is
# built for it, and bcc must import in the venv.
venv=$REPO/.venv
if [[ ! -x $venv/bin/python ]] || ! grep -qx 'home = /usr/bin' "$venv/pyvenv.cfg" 2>/dev/null; then
    rm -rf "$venv"
    say "creating .venv with /usr/bin/python3"
    /usr/bin/python3 -m venv "$venv"
fi
stamp=$venv/.lbctl-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x $venv/bin/lbctl || $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
    say "installing lbctl and its dev dependencies into .venv"
    pip_log=$(mktemp)
    if ! "$venv/bin/python" -m pip install -q -e '.[dev]' >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        fail "pip install -e '.[dev]' failed"
    fi
    rm -f "$pip_log"
    echo "$want" >"$stamp"
fi

# bcc (python3-bpfcc) is pure Python in Debian's dist-packages.  Expose just
# that package through a shim directory, not all of dist-packages, so the
# venv's own dependencies never mix with Debian's.
bcc_src=/usr/lib/python3/dist-packages/bcc
shim=$venv/lib/bcc-shim
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ $(readlink "$shim/bcc" 2>/dev/null) != "$bcc_src" || ! -f $site/lbctl-bcc.pth ]]; then
    mkdir -p "$shim"
    ln -sfn "$bcc_src" "$shim/bcc"
    echo "$shim" >"$site/lbctl-bcc.pth"
    "$venv/bin/python" -c 'import bcc' 2>/dev/null ||
        fail "bcc does not import in .venv (is python3-bpfcc installed?)"
    say "made bcc importable in .venv"
fi

# --- 6. Container images -----------------------------------------------------
bash scripts/build-images.sh | sed 's/^/setup: /'

# --- 7. bpf filesystem, for pinned eBPF objects --------------------------------
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    if mount -t bpf bpf /sys/fs/bpf 2>/dev/null; then
        say "mounted bpffs at /sys/fs/bpf"
    else
        say "could not mount bpffs at /sys/fs/bpf (pinning unavailable; continuing)"
    fi
fi

# --- 8. Podman (LBCTL_ENGINE=podman) -------------------------------------------
if [[ $with_podman == 1 ]]; then
    # Podman 4.3 on this kind of host starts no container with the inherited limits (runc:
    # "error setting rlimit ... operation not permitted"). A drop-in, so that the admin's
    # containers.conf stays untouched, lowers them for `podman run` and podman-compose;
    # lbctl passes its own Ulimits on create (API creates need them explicit).
    nofile=$(ulimit -Hn)
    if [[ $nofile == unlimited || $nofile -gt 65536 ]]; then nofile=65536; fi
    dropin=/etc/containers/containers.conf.d/lbctl.conf
    want_conf=$(printf '%s\n' "# written by lbctl's scripts/setup.sh: Podman needs explicit lower ulimits here" \
        '[containers]' "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=4096:8192\"]")
    if [[ $(cat "$dropin" 2>/dev/null) != "$want_conf" ]]; then
        mkdir -p "$(dirname "$dropin")"
        echo "$want_conf" >"$dropin"
        say "wrote $dropin (default_ulimits)"
    fi

    podman_sock=/run/podman/podman.sock
    podman_up() { curl -sf --max-time 5 --unix-socket "$podman_sock" http://d/_ping >/dev/null; }
    if ! podman_up; then
        say "starting podman system service on $podman_sock (log: /var/log/lbctl-podman.log)"
        mkdir -p "$(dirname "$podman_sock")"
        setsid nohup podman system service --time=0 "unix://$podman_sock" \
            >>/var/log/lbctl-podman.log 2>&1 </dev/null &
        for _ in $(seq 60); do podman_up && break; sleep 0.5; done
        podman_up || fail "podman system service did not answer within 30 s; see /var/log/lbctl-podman.log"
    fi

    # The images Docker has (built above), into Podman's store when their build label differs.
    stale=()
    for image in lbctl/pause:latest lbctl/demo:latest lbctl/demo-health:latest; do
        label='{{ index .Config.Labels "lbctl.build-sha256" }}'
        want=$(docker image inspect --format "$label" "$image")
        have=$(podman image inspect --format "$label" "$image" 2>/dev/null || true)
        if [[ $have != "$want" ]]; then stale+=("$image"); fi
    done
    if ((${#stale[@]})); then
        docker save "${stale[@]}" | podman load -q >/dev/null ||
            fail "loading ${stale[*]} into Podman failed"
        say "loaded ${stale[*]} into Podman"
    fi
fi
