"""What the CLI prints: the status table (80 columns), progress lines, rollout history."""

from __future__ import annotations

import textwrap
import time
from typing import Any

# What the head line adds to the mode for the paths that are not the mode's default.
_PATHS = {"host": " (host network)", "activation": " (socket activation)"}


def render_table(apps: list[dict[str, Any]]) -> str:
    """One block per app, 80 columns wide."""
    if not apps:
        return "no apps (create one with `lbctl run`)"
    lines: list[str] = []
    for a in apps:
        total = sum(r["connections_total"] for r in a["replicas"]) or 0
        rev = f"  rev {a['revision']}" if a.get("revision") else ""
        published = ",".join(a.get("publishes") or [a["publish"]])
        mode = a["mode"] + _PATHS.get(a.get("path", ""), "")
        head = f"{a['name']}  {mode}  {published}  {a['ready']}/{a['desired']} ready{rev}"
        lines.append(head)
        if a.get("error"):
            lines.append(f"  error: {a['error']}")
        for warning in a.get("warnings") or ():
            lines += _wrapped(f"warning: {warning}")
        if a.get("port_conflict"):  # the port is served by lbctl's rule, held by another
            parts = textwrap.wrap(f"warning: {a['port_conflict']}", 76, break_on_hyphens=False,
                                  break_long_words=False)
            lines += ["  " + parts[0], *("    " + part for part in parts[1:])]
        ro = a.get("rollout")
        if ro and ro.get("state") in ("progressing", "paused", "failed"):
            canary = f", canary {ro['canary']}%" if ro.get("canary") else ""
            lines.append(f"  rollout: {ro['state']} to revision {ro['target']}{canary}")
        crash = a.get("crash")
        if crash and not a.get("converged"):
            lines.append(f"  crash: {crash['message']}"[:80])
        hold = a.get("hold")
        if hold:
            lines.append(_hold_line(hold))
        rel = a.get("release")
        if rel and (rel["state"] == "running" or not a.get("converged")):
            what = (f"revision {rel['revision']} running" if rel["state"] == "running"
                    else rel["message"])
            lines.append(f"  release: {what}"[:80])
        lines.append(f"  {'REPLICA':<18}{'REV':>4} {'STATE':<11}{'UPTIME':>8}"
                     f"{'CONNECTIONS':>13}{'SHARE':>7}")
        for r in a["replicas"]:
            share = f"{100 * r['connections_total'] / total:.0f}%" if total else "-"
            name = r["name"] + (" *" if r.get("adopted") else "")
            revision = str(r["revision"]) if r.get("revision") else "-"
            lines.append(
                f"  {name[:17]:<18}{revision:>4} {r['state']:<11}"
                f"{_uptime(r.get('uptime_seconds')):>8}{r['connections_total']:>13}{share:>7}"
            )
        if any(r.get("adopted") for r in a["replicas"]):
            lines.append("  * adopted: not created by lbctl, never removed by it")
        for r in a["replicas"]:
            failure = (r.get("probe") or {}).get("last_failure")
            if failure and r["state"] != "ready":  # why it is not (yet, or any more) ready
                lines += _wrapped(f"{r['name']}: last probe: {failure['message']}")
        for r in a["replicas"]:
            if r.get("note"):  # wrapped: the table stays 80 columns wide
                lines.append(f"  {r['name']}:")
                parts = textwrap.wrap(str(r["note"]), 76, break_on_hyphens=False,
                                      break_long_words=False)
                lines += ["    " + part for part in parts]
        lines.append("")
    return "\n".join(lines).rstrip()


def _wrapped(text: str) -> list[str]:
    parts = textwrap.wrap(text, 76, break_on_hyphens=False, break_long_words=False)
    return ["  " + parts[0], *("    " + part for part in parts[1:])] if parts else []


def _hold_line(hold: dict[str, Any]) -> str:
    if not hold["paused"]:
        return "  resuming: the hold releases what it held"
    until = hold.get("until") or 0
    left = max(0, round(until - time.time()))
    head = f"  paused until {time.strftime('%H:%M:%S', time.localtime(until))} ({left}s left)"
    if not hold["holding"]:
        return f"{head}, not holding yet"
    held = hold.get("held")
    return head + (f", {held} connection(s) waiting" if held is not None
                   else ", new connections wait")


def progress(a: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in a["replicas"]:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    extra = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "ready")
    # What the replicas that are not ready last failed at: why a `run` is still waiting.
    failures = [f for r in a["replicas"] if r["state"] != "ready"
                and (f := (r.get("probe") or {}).get("last_failure"))]
    if failures:
        latest = max(failures, key=lambda f: f.get("at") or 0)
        extra += f"; last probe: {latest['message']}"
    line = f"{a['name']}: {a['ready']}/{a['desired']} ready" + (f" ({extra})" if extra else "")
    ro = a.get("rollout")
    if ro and ro.get("state") in ("progressing", "paused"):
        rev = a.get("revision")
        new = sum(1 for r in a["replicas"] if r.get("revision") == rev and r["state"] == "ready")
        line += f", revision {rev}: {new}/{a['desired']} ready"
    return line


def render_history(data: dict[str, Any]) -> str:
    lines = [f"{'REVISION':<10}{'CREATED':<21}CHANGE"]
    for r in data["history"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])) \
            if r.get("created") else "-"
        mark = " (current)" if r.get("current") else ""
        lines.append(f"{r['revision']:<10}{when:<21}{r.get('note') or '-'}{mark}")
    return "\n".join(lines)


def render_rollout(data: dict[str, Any]) -> str:
    ro = data.get("rollout")
    if not ro:
        return f"{data['name']}: revision {data['revision']}, no rollout yet"
    canary = f", canary {ro['canary']}%" if ro.get("canary") else ""
    return (f"{data['name']}: rollout to revision {ro['target']} {ro['state']}{canary}"
            + (f": {ro['message']}" if ro.get("message") else ""))


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"
