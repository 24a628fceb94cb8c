#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Build lbctl's offline container images: lbctl/demo, lbctl/demo-health,
# lbctl/demo-activation (demo labelled io.lbctl.listen-fds=true),
# lbctl/pause, lbctl/client (the tests' client inside containers) and
# lbctl/activate (the socket-activation entrypoint shim; its static binary
# stays in images/activate/out/ for bind mounts).  No registry is reachable,
# so each image is a static C binary
# in a FROM-scratch image.  Idempotent: an image is rebuilt only when the
# sha256 of its inputs (source, Dockerfile, compiler flags) differs from the
# `lbctl.build-sha256` label of the image that exists; up to date means
# silent.
#
#   scripts/build-images.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."

force=0
[[ "${1:-}" == "--force" ]] && force=1

CC=${CC:-gcc}
# -static: the images are FROM scratch.  No -Werror: a newer compiler's new
# warnings must not break a build on another machine.
CFLAGS="-static -O2 -s -Wall -Wextra"
# The classic builder: on Engine 20.10 it needs no buildx plugin, and the
# newer client on PATH may default to BuildKit.
export DOCKER_BUILDKIT=0

rebuilt=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

image_hash() {  # IMAGE -> the build label, empty if no image
    docker image inspect --format '{{ index .Config.Labels "lbctl.build-sha256" }}' "$1" \
        2>/dev/null || true
}

# build IMAGE DIR DOCKERFILE HASH
build() {
    local image=$1 dir=$2 dockerfile=$3 hash=$4
    if ! docker build -q --label "lbctl.build-sha256=$hash" -t "$image" \
            -f "$dir/$dockerfile" "$dir" >"$log" 2>&1; then
        cat "$log" >&2
        echo "build-images: docker build of $image failed" >&2
        exit 1
    fi
    rebuilt=1
    echo "build-images: built $image"
}

# compile_and_build DIR PROG IMAGE [BINARY]: images/DIR/PROG.c ->
# images/DIR/out/PROG, then the image from images/DIR/Dockerfile.  Sets HASH to
# the inputs' hash.  BINARY=binary: out/PROG is itself an output (used outside
# the image), so it is compiled whenever it is missing.
compile_and_build() {
    local dir="images/$1" prog=$2 image=$3 binary=${4:-}
    HASH=$( { echo "$CFLAGS"; cat "$dir/$prog.c" "$dir/Dockerfile"; } | sha256sum | cut -d' ' -f1)
    if [[ $force == 0 && "$(image_hash "$image")" == "$HASH" ]] \
            && [[ -z $binary || -x "$dir/out/$prog" ]]; then
        return
    fi
    mkdir -p "$dir/out"
    # shellcheck disable=SC2086  # CFLAGS is a list of words
    if ! "$CC" $CFLAGS -o "$dir/out/$prog" "$dir/$prog.c" 2>"$log"; then
        cat "$log" >&2
        echo "build-images: compiling $dir/$prog.c failed (needs gcc and libc6-dev)" >&2
        exit 1
    fi
    # Warnings are shown, not fatal.
    if [[ -s "$log" ]]; then cat "$log" >&2; fi
    build "$image" "$dir" Dockerfile "$HASH"
}

if ! docker info >/dev/null 2>&1; then
    echo "build-images: no Docker engine answers (run 'make setup')" >&2
    exit 1
fi

compile_and_build pause pause lbctl/pause:latest
compile_and_build demo httpd lbctl/demo:latest
# demo-health is demo plus a HEALTHCHECK: its hash covers demo's.
health_hash=$( { echo "$HASH"; cat images/demo/Dockerfile.health; } | sha256sum | cut -d' ' -f1)
if [[ $force == 1 || "$(image_hash lbctl/demo-health:latest)" != "$health_hash" ]]; then
    build lbctl/demo-health:latest images/demo Dockerfile.health "$health_hash"
fi
# demo-activation is demo plus the io.lbctl.listen-fds label (socket activation).
act_hash=$( { echo "$HASH"; cat images/demo/Dockerfile.activation; } | sha256sum | cut -d' ' -f1)
if [[ $force == 1 || "$(image_hash lbctl/demo-activation:latest)" != "$act_hash" ]]; then
    build lbctl/demo-activation:latest images/demo Dockerfile.activation "$act_hash"
fi
compile_and_build client client lbctl/client:latest
compile_and_build activate activate lbctl/activate:latest binary
if [[ $rebuilt == 1 ]]; then
    # The images these replaced are left untagged; drop ours that no
    # container uses (the label keeps other projects' images out of it).
    docker image prune -f --filter label=lbctl.build-sha256 >/dev/null 2>&1 || true
fi
