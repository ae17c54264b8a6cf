#!/usr/bin/env python3
"""The results writer of bench/run.sh (standard library only).

    python3 bench/tooling/report.py RAW_DIR OUT.md [--chart EXTRA.svg]

RAW_DIR holds meta.json (how the run was made) and runs.jsonl (one line per pgbench run:
its pgbench numbers and bench.snapshot() before and after it). This script takes the
differences, checks that every run did what it claims (every fresh claim 'won', every
contended claim 'conflicted', ...), computes medians over the rounds, and writes

    OUT.md                      the markdown tables (also printed)
    OUT.json                    the same numbers, for bench/tooling/chart.py
    OUT.svg (and EXTRA.svg)     the chart (bench/tooling/chart.py)

Exit status 0, or 3 when a sanity check failed.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chart  # noqa: E402

# case -> (label, table the case writes: 'exec', 'rt', 'locks' or None)
CASES = [
    ("claim_fresh", "1. fresh claim (won)", "exec"),
    ("claim_contended", "2. contended claim (conflicted)", "exec"),
    ("steal", "3. stale steal (stole)", "exec"),
    ("heartbeat", "4. heartbeat", "exec"),
    ("finish", "5. claim + finish", "exec"),
    ("touch", "6. runtime touch (per beat)", "rt"),
    ("touch_batch", "7. touch batch of 1000", "rt"),
    ("lock_acquire", "11. lock acquire (a free lock)", "locks"),
    ("lock_heartbeat", "12. lock heartbeat", "locks"),
    ("lease_fence", "13. lease fence check (with the secret)", "exec"),
    ("lock_fence", "14. lock fence check (with the secret)", "locks"),
]
LABEL = {c: l for c, l, _ in CASES}
TABLE = {c: t for c, _, t in CASES}
TABLE.update({"history_claim": "exec", "sweep": None, "ceiling": None})
BREAKDOWN = [
    ("select1", "`SELECT 1`: the round trip"),
    ("bd_call", "`lease_sched.runtime_pending()`: a bare extension call (pgrx, SECURITY DEFINER, SET search_path)"),
    ("bd_touch_sql", "the SELECT inside `runtime_touch`, sent directly"),
    ("ext_touch", "`lease_sched.runtime_touch(id)` (buffered)"),
    ("base_touch", "baseline: `UPDATE runtimes SET last_seen_at = now()`"),
    ("bd_heartbeat_sql", "the UPDATE inside `lease_heartbeat`, sent directly"),
    ("ext_heartbeat", "`lease_sched.lease_heartbeat(id, token)`"),
    ("base_heartbeat", "baseline: the hand-written heartbeat UPDATE"),
]
# The targets: every case at least as fast as the hand-written SQL, under either
# synchronous_commit, and the buffered touch at 80 % of the SELECT 1 ceiling.
RATIO_TARGET = {case: 1.0 for case in ("claim_fresh", "claim_contended", "steal", "heartbeat", "finish",
                                       "touch", "touch_batch", "lock_acquire", "lock_heartbeat",
                                       "lease_fence", "lock_fence")}
TOUCH_CEILING_TARGET = 0.8


def portable(run):
    """The portable edition's runtimes live in lease_sched.runtime_rows (under a view)."""
    return "lease_sched.runtime_rows" in ((run.get("after") or {}).get("tables") or {})


def table_name(side, kind, run):
    if side == "ext" and kind == "rt" and portable(run):
        return "lease_sched.runtime_rows"
    return ("lease_sched." if side == "ext" else "baseline.") + {"exec": "sys_cron_executions", "rt": "runtimes",
                                                                   "locks": "locks"}[kind]


def delta_table(run, name):
    b = run["before"]["tables"].get(name, {})
    a = run["after"]["tables"].get(name, {})
    return {k: a.get(k, 0) - b.get(k, 0) for k in a if k not in ("live", "dead", "bytes")} | {
        "dead_end": a.get("dead", 0), "bytes_end": a.get("bytes", 0)}


def delta_stats(run):
    b, a = run["before"]["stats"], run["after"]["stats"]
    return {k: a[k] - b.get(k, 0) for k in a}


def derive(run):
    """Per-run numbers every table below uses."""
    txns = run.get("txns") or 0
    secs = run.get("secs") or 0
    d = {"txns": txns, "tps": run.get("tps"), "lat": run.get("lat_ms"), "lag": run.get("lag_ms")}
    d["wal"] = run["after"]["wal"] - run["before"]["wal"] if run.get("before") and run.get("after") else None
    d["wal_per_txn"] = d["wal"] / txns if d["wal"] is not None and txns else None
    d["wal_per_s"] = d["wal"] / secs if d["wal"] is not None and secs else None
    d["cpu_cores"] = run["cpu_ticks"] / run["clk_tck"] / secs if secs else None
    d["cpu_ms_per_txn"] = 1000.0 * run["cpu_ticks"] / run["clk_tck"] / txns if txns else None
    d["stats"] = delta_stats(run) if run.get("before") else {}
    kinds = ["exec", "rt"] if run["case"] in ("scale", "sweep") else ([TABLE[run["case"]]] if TABLE.get(run["case"]) else [])
    side = "ext" if run["side"] in ("ext", "select1") else "base"
    d["tables"] = {k: delta_table(run, table_name(side, k, run)) for k in kinds} if run.get("before") else {}
    upd = sum(t.get("upd", 0) for t in d["tables"].values())
    hot = sum(t.get("hot", 0) for t in d["tables"].values())
    d["hot_share"] = hot / upd if upd else None
    d["upd"] = upd
    return d


def check(run, d, meta):
    """Did the run do what its case says? Returns a list of problems."""
    case, side, n = run["case"], run["side"], d["txns"]
    s, t = d["stats"], d["tables"]
    problems = []
    if run.get("rc", 0) != 0 or not n:
        return [f"pgbench failed (exit {run.get('rc')}, {n} transactions)"]
    if run.get("failed"):
        problems.append(f"{run['failed']} failed transactions")

    def want(what, got, expected):
        if got != expected:
            problems.append(f"{what} = {got}, expected {expected}")

    ex = t.get("exec", {})
    rt = t.get("rt", {})
    lk = t.get("locks", {})
    # Both sides: one new lock row per acquire, one updated lock row per heartbeat, and a
    # fence writes nothing (a row lock only). A failed fence is a failed transaction
    # (LS001 on the extension's side, \gset of no row on the baseline's).
    if case == "touch_batch" and side in ("ext", "base"):
        want("runtime rows updated", rt.get("upd"), 1000 * n)
    if case == "lock_acquire":
        want("locks inserted", lk.get("ins"), n)
    if case == "lock_heartbeat":
        want("locks updated", lk.get("upd"), n)
    if case == "lease_fence":
        want("lease rows updated", ex.get("upd"), 0)
    if case == "lock_fence":
        want("lock rows updated", lk.get("upd"), 0)
    # The portable edition counts claims, heartbeats, finishes and touches nowhere (its
    # stats() reads 0 for them, docs/portable.md): there only the tables' counters are checked.
    if side == "ext" and meta.get("edition") != "portable":
        if case in ("claim_fresh", "history_claim", "finish"):
            want("claims won", s.get("claims_won"), n)
        if case == "finish":
            want("finishes", s.get("finishes"), n)
        if case == "claim_contended":
            want("claims conflicted", s.get("claims_conflicted"), n)
            want("claims won + stole", s.get("claims_won", 0) + s.get("claims_stole", 0), 0)
        if case == "steal":
            want("claims stole", s.get("claims_stole"), n)
        if case == "heartbeat":
            want("heartbeats ok", s.get("heartbeats_ok"), n)
        if case == "touch":
            want("touches buffered", s.get("touches_buffered"), n)
            want("touches written directly", s.get("touches_direct"), 0)
        if case == "scale":
            want("heartbeats lost", s.get("heartbeats_lost"), 0)
            want("touches written directly", s.get("touches_direct"), 0)
    elif side == "base":
        if case in ("claim_fresh", "history_claim", "finish"):
            want("rows inserted", ex.get("ins"), n)
        if case == "finish":
            want("rows finished", ex.get("upd"), n)
        if case == "claim_contended":
            want("rows inserted", ex.get("ins"), 0)
            want("rows updated", ex.get("upd"), 0)
        if case in ("steal", "heartbeat"):
            want("rows updated", ex.get("upd"), n)
        if case == "touch":
            want("rows updated", rt.get("upd"), n)
    return problems


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, suffix=""):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0 and abs(v) < 10:
        digits = 2 if abs(v) < 1 else 1
    return f"{v:,.{digits}f}{suffix}"


def pct(v):
    return "–" if v is None else f"{100 * v:.0f}%"


def ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def summarize(meta, runs):
    out = {"meta": meta, "sync": {}, "history": [], "scale": [], "checks": [], "runs": len(runs)}
    for r in runs:
        r["d"] = derive(r)
        for p in check(r, r["d"], meta):
            out["checks"].append(f"{r['sync']} {r['case']} {r['side']} round {r['round']}: {p}")
    syncs = []
    for r in runs:
        if r["sync"] not in syncs and r["case"] not in ("sweep", "history_claim", "scale"):
            syncs.append(r["sync"])

    def group(sync, case, side, extra=None):
        return [r["d"] for r in runs if r["sync"] == sync and r["case"] == case and r["side"] == side
                and (extra is None or all(r["extra"].get(k) == v for k, v in extra.items()))]

    def medians(ds):
        keys = ["tps", "lat", "wal_per_txn", "wal_per_s", "hot_share", "cpu_cores", "cpu_ms_per_txn", "lag", "txns"]
        return {k: med([d[k] for d in ds]) for k in keys} | {"n": len(ds)}

    for sync in syncs:
        ceiling = medians(group(sync, "ceiling", "select1"))
        rows = []
        for case, label, _ in CASES:
            e, b = medians(group(sync, case, "ext")), medians(group(sync, case, "base"))
            if not e["n"] and not b["n"]:
                continue
            row = {"case": case, "label": label, "ext": e, "base": b,
                   "ratio": e["tps"] / b["tps"] if e["tps"] and b["tps"] else None,
                   "ext_of_ceiling": e["tps"] / ceiling["tps"] if e["tps"] and ceiling["tps"] else None,
                   "base_of_ceiling": b["tps"] / ceiling["tps"] if b["tps"] and ceiling["tps"] else None,
                   "wal_ratio": (e["wal_per_txn"] / b["wal_per_txn"]
                                 if e["wal_per_txn"] is not None and b["wal_per_txn"] else None),
                   "target": RATIO_TARGET.get(case)}
            rows.append(row)
        bd = []
        for script, what in BREAKDOWN:
            ds = group(sync, "breakdown", script)
            if ds:
                bd.append({"script": script, "what": what} | medians(ds))
        out["sync"][sync] = {"ceiling": ceiling, "cases": rows, "breakdown": bd,
                             "machine": machine([r for r in runs if r["sync"] == sync and r["case"] not in
                                                 ("sweep", "history_claim", "scale")])}

    sizes = sorted({r["extra"]["history"] for r in runs if r["case"] in ("sweep", "history_claim")})
    for size in sizes:
        hs = [r for r in runs if r["extra"].get("history") == size]
        sync = hs[0]["sync"]
        out["history"].append({
            "rows": size, "sync": sync,
            "sweep": medians(group(sync, "sweep", "ext", {"history": size})),
            "claim_ext": medians(group(sync, "history_claim", "ext", {"history": size})),
            "claim_base": medians(group(sync, "history_claim", "base", {"history": size})),
        })
    for r in runs:
        if r["case"] != "scale":
            continue
        d = r["d"]
        ex, rt = d["tables"].get("exec", {}), d["tables"].get("rt", {})
        out["scale"].append({
            "sync": r["sync"], "side": r["side"], "target_tps": r["extra"]["touch_rate"] + r["extra"]["hb_rate"],
            "tps": d["tps"], "lat": d["lat"], "lag": d["lag"], "secs": r["secs"], "txns": d["txns"],
            "cpu_cores": d["cpu_cores"], "wal_per_s": d["wal_per_s"], "wal_per_txn": d["wal_per_txn"],
            "hot_rt": rt.get("hot", 0) / rt["upd"] if rt.get("upd") else None,
            "hot_exec": ex.get("hot", 0) / ex["upd"] if ex.get("upd") else None,
            "upd_rt": rt.get("upd"), "upd_exec": ex.get("upd"),
            "dead_rt": rt.get("dead_end"), "dead_exec": ex.get("dead_end"),
            "autovacuum": rt.get("autovacuum", 0) + ex.get("autovacuum", 0),
            "flushes": d["stats"].get("flushes") if r["side"] == "ext" else None,
            "machine": machine([r]),
        })
    out["targets"] = targets(out)
    return out


def machine(rs):
    """Average CPU use over these runs, in cores: everything, our server, pgbench, the rest."""
    secs = sum(r.get("secs") or 0 for r in rs)
    if not secs:
        return None
    tck = rs[0]["clk_tck"]
    busy = sum(r.get("busy_ticks", 0) for r in rs) / tck / secs
    server = sum(r.get("cpu_ticks", 0) for r in rs) / tck / secs
    client = sum(r.get("client_secs", 0) for r in rs) / secs
    return {"busy": busy, "server": server, "client": client, "other": max(busy - server - client, 0)}


def machine_line(m):
    if not m:
        return ""
    return (f"CPU use during these runs, averaged (cores of the machine's total): {m['busy']:.2f} busy = "
            f"server {m['server']:.2f} + pgbench {m['client']:.2f} + other processes {m['other']:.2f}.\n")


def targets(out):
    res = []

    def add(name, measured, ok):
        res.append({"target": name, "measured": measured, "met": ok})

    for sync, s in out["sync"].items():
        rows = {r["case"]: r for r in s["cases"]}
        for case, goal in RATIO_TARGET.items():
            r = rows.get(case)
            if r and r["ratio"] is not None:
                add(f"{LABEL[case]} ≥ {goal}× baseline (sync {sync})", ratio(r["ratio"]), r["ratio"] >= goal)
        r = rows.get("touch")
        if r and r["ext_of_ceiling"] is not None:
            add(f"runtime touch ≥ {TOUCH_CEILING_TARGET:.0%} of the SELECT 1 ceiling (sync {sync})",
                pct(r["ext_of_ceiling"]), r["ext_of_ceiling"] >= TOUCH_CEILING_TARGET)
        if r and r["wal_ratio"] is not None:
            add(f"touch WAL per beat ≤ 1/20 of baseline (sync {sync})",
                f"1/{1 / r['wal_ratio']:.1f}" if r["wal_ratio"] else "0", r["wal_ratio"] <= 1 / 20)
        for case in ("heartbeat", "touch"):
            r = rows.get(case)
            if r and r["ext"]["hot_share"] is not None:
                add(f"HOT share of {case} updates ≥ 90% (sync {sync})", pct(r["ext"]["hot_share"]),
                    r["ext"]["hot_share"] >= 0.9)
    for sc in out["scale"]:
        if sc["side"] == "ext":
            for k, what in (("hot_rt", "runtimes"), ("hot_exec", "heartbeats")):
                if sc[k] is not None:
                    add(f"HOT share, scale run, {what} ≥ 90% (sync {sc['sync']})"
                        + (" — final flush only" if k == "hot_rt" else ""), pct(sc[k]), sc[k] >= 0.9)
    h = out["history"]
    if len(h) >= 2:
        lo, hi = h[0], h[-1]
        for key, what in (("sweep", "sweep"), ("claim_ext", "claim")):
            a, b = lo[key]["lat"], hi[key]["lat"]
            if a and b:
                add(f"{what} cost at {hi['rows']:,} history rows ≤ 1.5× its cost at {lo['rows']:,}",
                    f"{b / a:.2f}× ({a:.3f} → {b:.3f} ms)", b / a <= 1.5)
    return res


def markdown(out):
    m = out["meta"]
    L = []
    L.append(f"# lease_sched benchmark {m['stamp']}{' (quick)' if m['quick'] else ''}\n")
    L.append(f"`{m['command']}` at commit {m['commit']}; PostgreSQL {m['server']}; {m['cores']} cores, "
             f"{m['mem_gib']} GiB; pgbench -M prepared -c {m['clients']} -j {m['threads']} -T {m['duration']}, "
             f"{m['rounds']} round(s) of extension/baseline pairs, medians; load average at the end {m['loadavg']}.\n")
    lib = m.get("lib_bytes") or 0
    if lib:
        L.append(f"lease_sched.so as loaded by the server: {lib / 1e6:.1f} MB "
                 f"({'a release build' if lib < 20e6 else 'a DEBUG build: numbers not representative'}).\n")
    L.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(m["settings"].items())) + ".\n")
    for sync, s in out["sync"].items():
        c = s["ceiling"]
        L.append(f"## synchronous_commit = {sync}\n")
        L.append(f"`SELECT 1` ceiling: **{fmt(c['tps'])} tps**, {fmt(c['lat'], 3)} ms. " + machine_line(s["machine"]))
        L.append("| case | lease_sched tps | baseline tps | ratio ext/base | lease_sched ms | baseline ms "
                 "| ext / SELECT 1 | base / SELECT 1 | WAL B/txn ext | WAL B/txn base | HOT ext | HOT base "
                 "| server CPU ms/txn ext | base |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in s["cases"]:
            e, b = r["ext"], r["base"]
            L.append(f"| {r['label']} | {fmt(e['tps'])} | {fmt(b['tps'])} | **{ratio(r['ratio'])}** "
                     f"| {fmt(e['lat'], 3)} | {fmt(b['lat'], 3)} | {pct(r['ext_of_ceiling'])} | {pct(r['base_of_ceiling'])} "
                     f"| {fmt(e['wal_per_txn'])} | {fmt(b['wal_per_txn'])} | {pct(e['hot_share'])} | {pct(b['hot_share'])} "
                     f"| {fmt(e['cpu_ms_per_txn'], 3)} | {fmt(b['cpu_ms_per_txn'], 3)} |")
        if s.get("breakdown"):
            L.append("")
            L.append(f"Where a call's time goes (one client, synchronous_commit = {sync}, medians):\n")
            L.append("| statement | latency µs | server CPU µs per call |")
            L.append("|---|--:|--:|")
            for b in s["breakdown"]:
                L.append(f"| {b['what']} | {fmt(b['lat'] * 1000 if b['lat'] else None)} "
                         f"| {fmt(b['cpu_ms_per_txn'] * 1000 if b['cpu_ms_per_txn'] else None)} |")
        L.append("")
    if out["history"]:
        L.append(f"## Sweep and claim cost by history size (pgbench -c 1, synchronous_commit = {out['history'][0]['sync']})\n")
        L.append("| finished rows in history | sweep ms | vs smallest | server CPU ms | claim ms (lease_sched) "
                 "| vs smallest | server CPU ms | claim ms (baseline) | vs smallest | server CPU ms |")
        L.append("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        h0 = out["history"][0]
        for h in out["history"]:
            cells = []
            for k in ("sweep", "claim_ext", "claim_base"):
                v, v0 = h[k]["lat"], h0[k]["lat"]
                cells += [fmt(v, 3), ratio(v / v0) if v and v0 else "–", fmt(h[k]["cpu_ms_per_txn"], 3)]
            L.append(f"| {h['rows']:,} | " + " | ".join(cells) + " |")
        L.append("")
    if out["scale"]:
        sc0 = out["scale"][0]
        L.append(f"## Scale run (open loop, pgbench --rate {sc0['target_tps']:,} for {sc0['secs']:.0f} s per side)\n")
        L.append("| sync | side | achieved tps | latency ms | schedule lag ms | server CPU (cores) | WAL KiB/s "
                 "| WAL B/beat | HOT runtimes | HOT leases | dead tuples at end (runtimes / leases) | autovacuum runs |")
        L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for sc in out["scale"]:
            L.append(f"| {sc['sync']} | {'lease_sched' if sc['side'] == 'ext' else 'baseline'} | {fmt(sc['tps'])} "
                     f"| {fmt(sc['lat'], 3)} | {fmt(sc['lag'], 3)} | {fmt(sc['cpu_cores'], 2)} "
                     f"| {fmt(sc['wal_per_s'] / 1024 if sc['wal_per_s'] is not None else None)} "
                     f"| {fmt(sc['wal_per_txn'])} | {pct(sc['hot_rt'])} | {pct(sc['hot_exec'])} "
                     f"| {fmt(sc['dead_rt'])} / {fmt(sc['dead_exec'])} | {sc['autovacuum']} |")
        L.append("lease_sched's HOT shares and dead tuples come from pg_stat_user_tables, which sees only the "
                 "final `runtime_flush()` this run issues: the background sweeper's own flushes never reach the "
                 "statistics (docs/history/benchmarks.md, problem 1). WAL is measured from the LSN and is complete.\n")
        for sc in out["scale"]:
            L.append(f"- {sc['sync']}, {'lease_sched' if sc['side'] == 'ext' else 'baseline'}: " + machine_line(sc["machine"]).strip())
        L.append("")
    L.append("## Targets\n")
    L.append("| target | measured | met |")
    L.append("|---|--:|:-:|")
    for t in out["targets"]:
        L.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    L.append("")
    L.append("## Sanity checks\n")
    if out["checks"]:
        L += [f"- FAILED: {c}" for c in out["checks"]]
    else:
        L.append(f"All {out['runs']} runs did what their case says (outcomes, rows written, no failed transaction).")
    L.append("")
    return "\n".join(L)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    raw, md_path = argv[1], argv[2]
    extra_chart = argv[argv.index("--chart") + 1] if "--chart" in argv else None
    meta = json.load(open(os.path.join(raw, "meta.json")))
    runs = [json.loads(line) for line in open(os.path.join(raw, "runs.jsonl")) if line.strip()]
    out = summarize(meta, runs)
    text = markdown(out)
    base = md_path[:-3] if md_path.endswith(".md") else md_path
    svg = base + ".svg"
    text = text.replace("## Targets", f"![chart]({os.path.basename(svg)})\n\n## Targets", 1)
    with open(md_path, "w") as f:
        f.write(text)
    for r in runs:
        r.pop("before", None), r.pop("after", None)
    with open(base + ".json", "w") as f:
        json.dump(out, f, indent=1, default=str)
    chart.render(out, svg)
    if extra_chart:
        chart.render(out, extra_chart)
    print(text)
    return 3 if out["checks"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
