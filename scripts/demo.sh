#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `make demo`: a daemon and a 3-replica demo app on 127.0.0.1:8080, then a
# scale to 5.  Placeholder until the daemon and CLI are wired up.
echo "demo: not yet wired"
exit 0
