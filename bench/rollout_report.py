"""The rolling-update section of bench/RESULTS.md, its target row and bench/rollout.png, from
results.json's "rollout" list (bench.rollout.Sample.to_json)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.rollout import BUCKET_S, CONNECTIONS, POST_S, PRE_S, STOP_GRACE_S, WARMUP_S

Results = dict[str, Any]
KINDS = ("connect", "read", "write", "timeout", "non2xx")


def _k(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"



def _table(w: Callable[[str], None], rows: Sequence[dict[str, Any]]) -> None:
    """The rollout cases' table, a row per case and each cell per round (both sections)."""
    w("| case | rollout time | requests | failed | req/s before | req/s during | lowest | "
      "daemon CPU |")
    w("|---|---|---|---|---|---|---|---|")
    for s in rows:
        rs = s["rounds"]
        cpu = _per_round(rs, lambda r: "-" if r.get("daemon_cpu_pct") is None
                         else f"{r['daemon_cpu_pct']:.0f}%")
        took = _per_round(rs, lambda r: f"{r['rollout_s']:.1f} s")
        reqs = _per_round(rs, lambda r: f"{r['requests']:,}")
        w(f"| {s['label']} | {took} | {reqs} | "
          f"{_per_round(rs, _failed)} | {_per_round(rs, lambda r: _k(r['before_rps']))} | "
          f"{_per_round(rs, lambda r: _k(r['during_rps']))} | "
          f"{_per_round(rs, lambda r: _k(r['lowest_rps']))} | {cpu} |")


def _per_round(rounds: list[dict[str, Any]], fmt: Any) -> str:
    return " / ".join(fmt(r) for r in rounds)


def _failed(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {r[k]}" for k in KINDS if r.get(k))
    return f"**{r['failed']}** ({kinds})" if kinds else "0"


def _rows(res: Results) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in res.get("rollout") or []}


def target(res: Results) -> tuple[str, str, bool | None, str]:
    """The Targets table's row: no lbctl rollout fails a request."""
    ours = [s for s in res.get("rollout") or [] if s["lbctl"]]
    meas = "; ".join(f"{s['id']}: {s['failed']} of {s['requests']:,}" for s in ours) or "n/a"
    why = ("An old replica leaves the data plane before anything stops it (iptables: its DNAT "
           "rule; ebpf: its slot in the selection table, queued connections migrate), then "
           "drains: it gets SIGTERM once its open connections are done. See the rolling "
           "update section for the same rollout without the drain.")
    lost = [s for s in ours if s["failed"]]
    if lost:
        why += (" Where lbctl lost requests here: " + "; ".join(
            f"{s['id']} {_fails(s)}" for s in lost) + ". wrk does not say when in the run a "
                "request failed, so this table cannot tell which step lost it.")
    return ("zero failed requests in a rolling update under load (lbctl, both modes)", meas,
            None if not ours else not lost, why)


def markdown(res: Results) -> list[str]:
    rows = res.get("rollout") or []
    if not rows:
        return []
    n = rows[0]["replicas"]
    nrounds = len(rows[0]["rounds"])
    out: list[str] = []
    w = out.append
    w("## Rolling update under load\n")
    w(f"{n} replicas of `lbctl/demo` (the static C server the tests use: on SIGTERM it closes "
      "its listener, finishes the requests it has and exits) rolled from one image name to "
      "another: the same build tagged twice, so the rollout is all that changes. The same wrk "
      f"load through every case: `wrk -t1 -c{CONNECTIONS} -H 'Connection: close'`, a new "
      f"connection per request, from {PRE_S:g} s before the rollout until {POST_S:g} s after "
      "it (longer than wrk's 5 s request timeout, so a request the rollout left hanging is "
      "counted); answers are counted per "
      f"{BUCKET_S:g} s by a wrk Lua script for the rates. Cases run in alternating order, "
      f"{nrounds} round(s); cells give each round (round 1 / round 2 ...).\n")
    w("- **lbctl** rows: `lbctl update APP --image NEW [flags]` on an app run with `lbctl run`, "
      "timed until the command returns, which is once the last old replica has stopped. "
      "Start-first: a new replica must be ready and stay ready for `--monitor` seconds "
      "(default 5) before an old one leaves the data plane; the old one then drains (its "
      "open connections finish; in ebpf mode its queued ones migrate) and only then gets "
      "SIGTERM. Stop-first: the old one leaves and drains first, then its successor starts. "
      "Reached on 127.0.0.1:PORT through lbctl's DNAT.")
    w("- **Swarm-like** rows, no lbctl: the replicas join one pause sandbox's network namespace "
      "(one SO_REUSEPORT group, hit on the sandbox IP like the `reuseport` path) and are "
      "replaced one at a time as `docker service update --update-parallelism 1` does: "
      f"stop-first = `docker stop -t {STOP_GRACE_S}` (SIGTERM, then the grace) and `docker "
      "run` of the new image, waiting until the new replica listens before the next; "
      "start-first = `docker run`, wait until it listens, then `docker stop` of the old one. "
      "Nothing takes the old replica out of the group: it is in it until its own process "
      "closes its listener on SIGTERM. The sandbox runs with the kernel's default "
      "`tcp_migrate_req=0` unless the row says otherwise (lbctl sets 1 in its sandboxes).\n")
    w("*failed*: wrk's socket errors and non-2xx answers over the whole run (connect: refused; "
      "read: reset or closed before the answer; timeout: no answer within 5 s). *requests*: "
      "the whole wrk run (before + rollout + after). *req/s before / during*: answers per "
      f"second before the rollout and while it runs; *lowest*: the slowest {BUCKET_S:g} s "
      "during the rollout, per second. *daemon CPU*: lbctl's daemon during the rollout, % of "
      "one core.\n")
    _table(w, rows)
    w("")
    w("### What the drain saves\n")
    for line in summary(res):
        w(f"- {line}")
    w("")
    w("The request rate through each rollout is drawn in `rollout.png` (last round).\n")
    return out


def _fails(s: dict[str, Any]) -> str:
    kinds: dict[str, int] = {}
    for r in s["rounds"]:
        for k in KINDS:
            kinds[k] = kinds.get(k, 0) + int(r.get(k) or 0)
    what = ", ".join(f"{k} {v}" for k, v in kinds.items() if v)
    return (f"{s['failed']} failed of {s['requests']:,}" + (f" ({what})" if what else "")
            + f" over {len(s['rounds'])} rollout(s)")


def warmup_target(res: Results) -> tuple[str, str, bool | None, str] | None:
    """The Targets table's row of the warm-up cases: with --ready-path, none fails."""
    rows = {s["id"]: s for s in res.get("warmup") or []}
    probed = [s for s in rows.values() if s["id"].endswith("-http")]
    if not probed:
        return None
    meas = "; ".join(f"{s['id']}: {s['failed']} of {s['requests']:,}" for s in rows.values())
    why = ("A new replica gets connections only once its readiness path answers 2xx-3xx "
           "(lbctl's probe of each replica; in ebpf mode through the replica's slot, since "
           "all share the port), so clients never meet it warming up; with today's TCP "
           "readiness (the tcp rows) it joins as soon as it listens and answers 503.")
    return ("zero failed requests rolling to a revision that warms up (`--ready-path`)", meas,
            not any(s["failed"] for s in probed), why)


def warmup_markdown(res: Results) -> list[str]:
    """The warm-up cases, side by side: TCP readiness against the readiness path."""
    rows = res.get("warmup") or []
    if not rows:
        return []
    out: list[str] = []
    w = out.append
    s0 = rows[0]
    w("### A revision that warms up: readiness path against TCP readiness\n")
    w(f"{s0['replicas']} replicas of `lbctl/demo` rolled to a revision with `WARMUP="
      f"{WARMUP_S}`: it listens at once and answers 503 on every path but /live for "
      f"{WARMUP_S} s, as a service loading its code or filling a cache does (issue 19's "
      "nginx image measured the same shape). Same wrk load and columns as above; default "
      "policy (`--monitor 5`). *tcp*: today's readiness (a connect in iptables mode, a "
      "listening socket in ebpf mode): a new replica joins as soon as it listens. *http*: "
      "`lbctl run ... --ready-path /ready`: it joins once its `/ready` answers 200 (probes "
      "0.25 s apart), so the rollout also waits out the warm-up. Cases in alternating order, "
      f"{len(s0['rounds'])} round(s).\n")
    _table(w, rows)
    w("")
    by = {s["id"]: s for s in rows}
    for mode in ("ebpf", "iptables"):
        tcp, http = by.get(f"warmup-{mode}-tcp"), by.get(f"warmup-{mode}-http")
        if tcp and http:
            w(f"- {mode}: TCP readiness {_fails(tcp)} in {tcp['rollout_s']:.1f} s; the "
              f"readiness path {_fails(http)} in {http['rollout_s']:.1f} s "
              f"({http['rollout_s'] / max(tcp['rollout_s'], 1e-3):.1f}x as long: each new "
              f"replica's {WARMUP_S} s warm-up now comes before its monitor).")
    w("")
    return out


def summary(res: Results) -> list[str]:
    """Sentences comparing the cases: failures, time, rate (each only from what ran)."""
    rows = _rows(res)
    out: list[str] = []
    for key in ("ebpf", "ebpf-monitor1", "iptables", "ebpf-stop-first"):
        if key in rows:
            out.append(f"lbctl {rows[key]['label'].removeprefix('lbctl ')}: "
                       f"{_fails(rows[key])}.")
    for key in ("swarm-stop-first", "swarm-stop-first-migrate", "swarm-start-first"):
        if key in rows:
            s = rows[key]
            per = s["failed"] / max(1, len(s["rounds"])) / max(1, s["replicas"])
            out.append(f"{s['label']}: {_fails(s)}, i.e. {per:.1f} per replica replaced.")
    ours = [s for s in rows.values() if s["lbctl"]]
    theirs = [s for s in rows.values() if not s["lbctl"]]
    if ours and theirs:
        # Per rollout, not per request: the load is the same, but lbctl's rollouts last
        # longer, so their windows hold more requests.
        a, b = sum(s["failed"] for s in ours), sum(s["failed"] for s in theirs)
        na, nb = (sum(len(s["rounds"]) for s in x) for x in (ours, theirs))
        out.append(f"Per rollout of {ours[0]['replicas']} replicas: lbctl {a / na:.2f} failed "
                   f"requests ({a} in {na} rollouts), Swarm-like {b / nb:.1f} ({b} in {nb}).")
    if "swarm-stop-first" in rows and "swarm-stop-first-migrate" in rows:
        plain, mig = rows["swarm-stop-first"], rows["swarm-stop-first-migrate"]
        out.append("tcp_migrate_req=1 alone (a closing listener's accept queue moves to the "
                   "others) does not make the Swarm-like update clean: "
                   f"{plain['failed']} failed without it, {mig['failed']} with it. The "
                   "queue is empty to begin with (the server accepts at once); what fails "
                   "are connections the old replica had already accepted when SIGTERM came, "
                   "whose request it had not read yet (see the notes): only not sending it "
                   "new connections before the signal avoids those.")
    if "ebpf" in rows and "ebpf-monitor1" in rows:
        d, m = rows["ebpf"], rows["ebpf-monitor1"]
        n = d["replicas"]
        out.append(f"Time: lbctl's default policy took {d['rollout_s']:.1f} s for {n} replicas "
                   f"(median), `--monitor 1` {m['rollout_s']:.1f} s: "
                   f"{d['rollout_s'] - m['rollout_s']:.1f} s less, where the policy alone "
                   f"accounts for {n} x (5 - 1) = {n * 4} s (each new replica proves itself "
                   "for `--monitor` seconds before an old one goes).")
    sw = rows.get("swarm-stop-first")
    if sw and "ebpf" in rows:
        fast = rows.get("ebpf-monitor1", rows["ebpf"])
        out.append(f"The Swarm-like stop-first loop took {sw['rollout_s']:.1f} s: it waits "
                   "for nothing but each new listener. lbctl's default policy took "
                   f"{rows['ebpf']['rollout_s'] / max(sw['rollout_s'], 1e-3):.0f}x as long, "
                   f"`--monitor 1` {fast['rollout_s'] / max(sw['rollout_s'], 1e-3):.0f}x: "
                   "the time goes to the monitor and the drains, and buys the failed "
                   "requests above.")
    rates = [f"{s['id']} {s['during_rps'] / s['before_rps']:.0%}" for s in rows.values()
             if s.get("during_rps") and s.get("before_rps")]
    if rates:
        out.append("Request rate during the rollout, as a share of the rate before it "
                   "(median round): " + ", ".join(rates) + ". Starting and stopping "
                   "containers takes CPU from the replicas and wrk on 2 cores (a fast "
                   "rollout packs that work into fewer seconds); lbctl's daemon adds its "
                   "own (column above).")
    return out


def chart(res: Results, path: Path) -> bool:
    """Answers per second over time through each rollout (last round); False without
    matplotlib or rollout figures."""
    rows = res.get("rollout") or []
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.9 * len(rows)), sharex=True,
                             squeeze=False)
    for ax, s in zip(axes[:, 0], rows, strict=True):
        r = s["rounds"][-1]
        tl = r["timeline"]
        ax.plot([tl["start"] + i * tl["step"] for i in range(len(tl["rps"]))],
                [x / 1000 for x in tl["rps"]], lw=0.8)
        ax.axvspan(0, r["rollout_s"], color="tab:orange", alpha=0.15)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("k req/s")
        ax.set_title(f"{s['label']}: {r['rollout_s']:.1f} s, {r['failed']} failed",
                     fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the rollout started (shaded: the rollout)")
    m = res["meta"]
    # merged results: the rollout's own run, not the one the other sections come from
    date = next((u["date"] for u in reversed(m.get("updates", []))
                 if "rollout" in u["scenarios"]), m["date"])
    fig.suptitle(f"lbctl bench: rolling update of {rows[0]['replicas']} replicas under wrk "
                 f"-c{CONNECTIONS}, new connection per request ({date})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
