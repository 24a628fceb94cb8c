#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# `make deb`: lbctl_<version>_<arch>.deb from this tree, for Debian 12 servers.
#
#   scripts/build-deb.sh [OUTDIR]        (default: the repository root)
#
# What goes in (nothing of the development set: no wrk, nginx, test images, gcc):
#   /usr/lib/lbctl/            a private Python environment (Debian's python3.11) with lbctl
#                              and its dependencies from pyproject.toml; of Debian's
#                              dist-packages only `bcc` (python3-bpfcc) is visible in it
#   /usr/bin/lbctl             the command (daemon and CLI)
#   /lib/systemd/system/lbctl.service   systemd/lbctl.service
#   /etc/lbctl/policy.toml     etc/policy.toml, a conffile
#   /usr/share/lbctl/bpf/      the eBPF program's source and header (bpf_loader.bpf_dir())
#   /usr/share/lbctl/images/pause.tar   the sandbox image, loaded into the engine by postinst
#   /usr/lib/lbctl/activate    the socket-activation shim (images/activate), static
#   /usr/share/man/man1/lbctl.1.gz      from the CLI's argparse definitions
# Maintainer scripts: packaging/deb/. Build needs: dpkg-deb, python3-venv, gcc and libc6-dev
# (the static sandbox binary), and PyPI (or the pip index configured here) for the
# dependencies; as root, missing Debian packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${1:-$REPO}
PY=/usr/bin/python3  # Debian's: python3-bpfcc is built for it, and the package runs on it
# There is no list address yet; set LBCTL_MAINTAINER to "Name <address>" for a real build.
MAINTAINER=${LBCTL_MAINTAINER:-lbctl developers <dev@lbctl.example.org>}

say() { echo "build-deb: $*"; }
fail() { echo "build-deb: $*" >&2; exit 1; }

# --- build dependencies ----------------------------------------------------------------
missing=()
for p in dpkg-dev python3-venv gcc libc6-dev; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == "ii "* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || fail "missing build dependencies: ${missing[*]} (apt-get install them)"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
        install --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' lbctl/__init__.py)
[[ -n $version ]] || fail "no __version__ in lbctl/__init__.py"
pyproject_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
[[ $version == "$pyproject_version" ]] ||
    fail "lbctl/__init__.py says $version, pyproject.toml $pyproject_version: make them agree"
arch=$(dpkg --print-architecture)
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# Every time stamp in the package is the last commit's (reproducible builds).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
lib=$root/usr/lib/lbctl

# --- the private Python environment ------------------------------------------------------
# A venv made here works at /usr/lib/lbctl: its interpreter finds its prefix from where
# pyvenv.cfg is, and bin/python3 is a link to /usr/bin/python3. Only the scripts pip writes
# name the build path, and the package ships none of them.
say "lbctl $version ($arch): installing lbctl and its dependencies into /usr/lib/lbctl"
"$PY" -m venv "$lib"
pip_log=$work/pip.log
if ! "$lib/bin/python3" -m pip install -q --no-compile --no-warn-script-location . \
        >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    fail "pip install failed"
fi
# The man page is made from the CLI's parser before the build tools leave the environment.
"$lib/bin/python3" -m pip install -q --no-compile argparse-manpage >"$pip_log" 2>&1 ||
    { cat "$pip_log" >&2; fail "pip install argparse-manpage failed"; }
mkdir -p "$root/usr/share/man/man1"
"$lib/bin/argparse-manpage" --module lbctl.cli.parser --function build_parser \
    --project-name lbctl --prog lbctl --version "$version" --manual-title "lbctl manual" \
    --description "N replicas of a container on one host port, balanced by the kernel" \
    --include packaging/deb/lbctl.1.include --output "$work/lbctl.1"
gzip -9n -c "$work/lbctl.1" >"$root/usr/share/man/man1/lbctl.1.gz"
"$lib/bin/python3" -m pip uninstall -q -y argparse-manpage pip setuptools >"$pip_log" 2>&1 ||
    { cat "$pip_log" >&2; fail "removing the build tools failed"; }
site=$lib/lib/python$pyver/site-packages
# Build leftovers: the scripts pip wrote name the build directory (lbctl's own command is
# /usr/bin/lbctl), the rest is pip's or the man page tool's.
find "$lib/bin" -type f -delete
rm -rf "$lib/include" "$lib/lib64" "$lib/share"
ln -s lib "$lib/lib64"
find "$site" -name direct_url.json -delete
# PyYAML's wheel links a copy of libyaml into its C loader; without it PyYAML uses its own
# pure-Python one (lbctl reads compose files with it, a few kB), and no embedded copy of a
# library escapes Debian's security updates.
find "$site/yaml" -name '_yaml*.so' -delete
# Debug symbols of the bundled extension modules, as dh_strip removes them.
find "$lib" -name '*.so' -type f -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} +
find "$lib" -type d -name __pycache__ -prune -exec rm -rf {} +
sed -i '/^command = /d' "$lib/pyvenv.cfg"

# bcc from python3-bpfcc, and nothing else of /usr/lib/python3/dist-packages.
mkdir -p "$lib/bcc"
ln -s ../../python3/dist-packages/bcc "$lib/bcc/bcc"
echo /usr/lib/lbctl/bcc >"$site/lbctl-bcc.pth"
# Links inside /usr are relative (Debian policy 10.5); the venv finds its pyvenv.cfg from
# the link's own place, not from its target.
ln -sfn ../../../bin/python3 "$lib/bin/python3"

# -I: the daemon ignores PYTHON* variables and the user's site directory; faulthandler: a
# fatal signal (the watchdog's SIGABRT) prints every thread's stack to stderr (the journal).
mkdir -p "$root/usr/bin"
cat >"$root/usr/bin/lbctl" <<'EOF'
#!/bin/sh
# lbctl in its private Python environment (/usr/lib/lbctl): see lbctl(1).
exec /usr/lib/lbctl/bin/python3 -I -X faulthandler -m lbctl "$@"
EOF
chmod 755 "$root/usr/bin/lbctl"

# --- the rest of the tree -----------------------------------------------------------------
install -D -m 0644 systemd/lbctl.service "$root/lib/systemd/system/lbctl.service"
install -D -m 0644 etc/policy.toml "$root/etc/lbctl/policy.toml"
# The program and every header it (and lbctl.dataplane.ebpf.layout) reads: bpf_loader.bpf_dir().
install -d "$root/usr/share/lbctl/bpf"
install -m 0644 bpf/*.c bpf/*.h "$root/usr/share/lbctl/bpf/"
install -D -m 0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/lbctl"

# The sandbox image: the same inputs, hash and label as scripts/build-images.sh's.
cflags="-static -O2 -s -Wall -Wextra"
# shellcheck disable=SC2086  # cflags is a list of words
gcc $cflags -o "$work/pause" images/pause/pause.c
pause_hash=$( { echo "$cflags"; cat images/pause/pause.c images/pause/Dockerfile; } |
    sha256sum | cut -d' ' -f1)
mkdir -p "$root/usr/share/lbctl/images"
"$PY" scripts/image-archive.py "$work/pause" lbctl/pause:latest \
    "$root/usr/share/lbctl/images/pause.tar" \
    --label lbctl.image=pause --label "lbctl.build-sha256=$pause_hash"
# The socket-activation shim, bind-mounted into activated apps' replicas
# (lbctl.dataplane.activation.shim): static, as it runs in any image.
# shellcheck disable=SC2086
gcc $cflags -o "$lib/activate" images/activate/activate.c
chmod 0755 "$lib/activate"

doc=$root/usr/share/doc/lbctl
mkdir -p "$doc"
gzip -9n -c README.md >"$doc/README.md.gz"
date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf 'lbctl (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
    "$version" "$commit" "$MAINTAINER" "$date" | gzip -9n >"$doc/changelog.gz"
"$PY" packaging/deb/copyright.py "$site" "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)" \
    >"$doc/copyright"

# --- control --------------------------------------------------------------------------
mkdir -p "$root/DEBIAN"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
echo /etc/lbctl/policy.toml >"$root/DEBIAN/conffiles"
# What the bundled extension modules link against (dpkg-shlibdeps needs a source tree's
# debian/control: give it a stand-in).
mkdir -p "$work/src/debian"
printf 'Source: lbctl\n\nPackage: lbctl\nArchitecture: any\n' >"$work/src/debian/control"
mapfile -t objects < <(find "$lib" -name '*.so*' -type f)
shlibs=libc6
if ((${#objects[@]})); then
    shlibs=$(cd "$work/src" && dpkg-shlibdeps -O --ignore-missing-info "${objects[@]}" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')
fi
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
    -e "s/@HEADERS@/linux-headers-$arch/" -e "s/@SHLIBS@/$shlibs/" \
    packaging/deb/control.in >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)

# Files as root's, directories 0755, modes without group/other write.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="$OUT/lbctl_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1))"
