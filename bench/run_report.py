"""The markdown that bench/run.py prints, the bars of issue 12 with their verdicts, and the
figures it keeps as JSON (bench/ab.py reads those)."""

import os
import subprocess
import time

ONE = "one connection"  # bench/triton_load.py: tritonclient.grpc.aio, one channel
MANY = "many connections"  # bench/loadgen.cc: 16 connections (one for a lone caller)
FLOOR = "gRPC floor (no model)"
SHAPES = {ONE: "bench/triton_load.py (tritonclient.grpc.aio 2.73, one InferenceServerClient: "
               "one channel, one connection)",
          MANY: "bench/loadgen.cc (C++ gRPC callback API, one process; 16 connections the "
                "callers rotate over, one for a lone caller)"}
# what bench/ab.py compares: (label, shape or None, batch, concurrency, figure, higher is better)
BAR_FIGURES = (
    ("one conn. b1 c1 p50 ms", ONE, 1, 1, "p50_ms", False),
    ("one conn. b1 c32 req/s", ONE, 1, 32, "requests_per_s", True),
    ("one conn. b64 c4 images/s", ONE, 64, 4, "images_per_s", True),
    ("many conn. b1 c1 p50 ms", MANY, 1, 1, "p50_ms", False),
    ("many conn. b1 c32 req/s", MANY, 1, 32, "requests_per_s", True),
    ("many conn. b64 c4 images/s", MANY, 64, 4, "images_per_s", True),
)
SCORE = "ours fmnist score (domain: mlp+baseline)"


def commit_of(root) -> str:
    answer = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"],
                            capture_output=True, text=True, check=False)
    return answer.stdout.strip()[:70] or "?"


def bar_figures(rows: dict, scores: dict, starts: list[dict]) -> dict:
    """The figures the bars judge, by label (for A/B medians)."""
    figures = {label: rows["ours v2", shape, batch, concurrency][key]
               for label, shape, batch, concurrency, key, _ in BAR_FIGURES}
    figures["scoring 10k s"] = scores[SCORE]
    figures["start to SERVING s"] = starts[0]["start_s_median"]
    figures["largest process RSS MB"] = starts[0]["largest_process_rss_mb"]
    return figures


def higher_is_better(label: str) -> bool:
    return any(label == bar[0] and bar[5] for bar in BAR_FIGURES)


def figures(limits: dict, rows: dict, scores: dict, starts: list[dict], args) -> dict:
    return {
        "label": args.label, "started": args.started, "ours_root": str(args.ours_root),
        "commit": commit_of(args.ours_root), "server_flags": args.server_flags,
        "uptime": args.uptime, "load_before": args.load_before, "load_after": args.load_after,
        "duration_s": args.duration, "warmup_s": args.warmup,
        "limits": {str(key): value for key, value in limits.items()},
        "rows": [{"server": name, "shape": shape, **row}
                 for (name, shape, _, _), row in rows.items()],
        "scores": scores, "starts": starts,
        "bar_figures": bar_figures(rows, scores, starts),
    }


def ratio(value: float, reference: float | None) -> str:
    return "-" if not reference else f"{value / reference:.2f}"


def report(limits: dict, rows: dict, scores: dict, starts: list[dict], args) -> str:
    peers = list(args.peers)
    flags = " ".join(args.server_flags) or "none"
    label = f" ({args.label})" if args.label else ""
    out = [f"Run {args.started}-{time.strftime('%H:%M %Z')}{label}, {os.cpu_count()} cores; "
           f"ours: `{commit_of(args.ours_root)}` ({args.ours_root}), default flags + "
           f"`{flags}`. `uptime` before: {args.uptime}; "
           f"1-min load after: {args.load_after:.2f}. "
           f"Load windows {args.duration:g} s after {args.warmup:g} s warm-up.", ""]
    if limits:
        out += ["#### In-process onnxruntime (the limit)", "",
                "| batch | best intra-op threads | calls/s | images/s | p50 ms |",
                "| --- | --- | --- | --- | --- |"]
        for batch in (1, 64):
            lim = limits[batch]
            out.append(f"| {batch} | {lim['threads']} | {lim['calls_per_s']:,.0f} "
                       f"| {lim['images_per_s']:,.0f} | {lim['p50_ms']:.3f} |")
        out.append("")
    for shape, tool in SHAPES.items():
        out += server_table(shape, tool, limits, rows, peers=peers, duration=args.duration)
    out += ["#### Batch-scoring the 10,000 test images", "",
            "| who | seconds | images/s | ÷ in-process mlp | ÷ in-process mlp+baseline |",
            "| --- | --- | --- | --- | --- |"]
    named = {f"in-process onnxruntime, {name}": limits[f"score {name}"]
             for name in ("mlp", "mlp+baseline") if limits}
    for name, seconds in {**named, **scores}.items():
        out.append(f"| {name} | {seconds:.3f} | {10000 / seconds:,.0f} "
                   f"| {ratio(seconds, limits.get('score mlp'))} "
                   f"| {ratio(seconds, limits.get('score mlp+baseline'))} |")
    out += ["", "#### Start-up and memory (bench/startup.py, the flags above)", "",
            "| added flags | start to SERVING, median (max) s | largest process RSS MB "
            "| all processes RSS MB | all processes PSS MB |", "| --- | --- | --- | --- | --- |"]
    for s in starts:
        out.append(f"| {s['flags'] or 'none'} | {s['start_s_median']:.2f} ({s['start_s_max']:.2f}) "
                   f"| {s['largest_process_rss_mb']:.0f} | {s['all_processes_rss_mb']:.0f} "
                   f"| {s['all_processes_pss_mb']:.0f} |")
    out += ["", "#### Bars (issue 12)", "", *bars(limits, rows, scores, starts, peers)]
    return "\n".join(out)


def server_table(shape: str, tool: str, limits: dict, rows: dict, *, peers: list[str],
                 duration: float) -> list[str]:
    out = [f"#### Servers, {shape}", "", f"Load generator: {tool}. Client CPU is its own; "
           "server CPU % is the server's process tree over the window (200% = both cores).", "",
           "| server / API | batch | conc | req/s | images/s | p50 ms | p99 ms | errors "
           "| client CPU ms/req | server CPU ms/req | server CPU % | images/s ÷ limit "
           + "".join(f"| req/s ÷ {p} | p50 ÷ {p} " for p in peers) + "|",
           "| --- " * (12 + 2 * len(peers)) + "|"]
    for (name, row_shape, batch, concurrency), r in rows.items():
        if row_shape != shape:
            continue
        server_cpu = r["server_cpu_s"]
        cells = [name, batch, concurrency, f"{r['requests_per_s']:,.0f}",
                 f"{r['images_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 sum(r["errors"].values()), f"{r['client_cpu_ms_per_request'] or 0:.3f}",
                 f"{r['server_cpu_ms_per_request'] or 0:.3f}",
                 "-" if server_cpu is None else f"{100 * server_cpu / duration:.0f}",
                 ratio(r["images_per_s"], limits and limits[batch]["images_per_s"])]
        for peer in peers:
            other = rows.get((peer, shape, batch, concurrency))
            cells += [ratio(r["requests_per_s"], other and other["requests_per_s"]),
                      ratio(r["p50_ms"], other and other["p50_ms"])]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    return [*out, ""]


def verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def bars(limits: dict, rows: dict, scores: dict, starts: list[dict], peers: list[str]) -> list:
    lines = []
    for shape in (ONE, MANY):
        ours = rows["ours v2", shape, 1, 32]["requests_per_s"]
        if peers:
            best = max(rows[p, shape, 1, 32]["requests_per_s"] for p in peers)
            lines.append(f"- {shape}, batch 1 x 32: {ours:,.0f} req/s vs 2 x the faster peer "
                         f"{best:,.0f} = {2 * best:,.0f} ({ours / best:.2f}x): "
                         f"{verdict(ours >= 2 * best)}")
        ours = rows["ours v2", shape, 64, 4]["images_per_s"]
        if limits:
            limit = limits[64]["images_per_s"]
            lines.append(f"- {shape}, batch 64 x 4: {ours:,.0f} images/s vs 0.6 x in-process "
                         f"{limit:,.0f} = {0.6 * limit:,.0f} ({ours / limit:.2f}x): "
                         f"{verdict(ours >= 0.6 * limit)}")
        ours = rows["ours v2", shape, 1, 1]["p50_ms"]
        if peers:
            theirs = {p: rows[p, shape, 1, 1]["p50_ms"] for p in peers}
            best = min(theirs.values())
            beside = ", ".join(f"{p} {ms:.2f} ms" for p, ms in theirs.items())
            line = f"- {shape}, batch 1 x 1: p50 {ours:.2f} ms ({beside}; {ours / best:.2f}x"
            lines.append(line + "): reported" if shape == ONE else
                         line + f" the better peer; bar 0.6 x {best:.2f} = {0.6 * best:.2f} ms): "
                         f"{verdict(ours <= 0.6 * best)}")
    served = scores[SCORE]
    if limits:
        both = limits["score mlp+baseline"]
        lines.append(f"- scoring 10k (`fmnist score`, mlp + baseline): {served:.3f} s vs 2 x "
                     f"in-process mlp+baseline {both:.3f} s = {2 * both:.3f} s "
                     f"({served / both:.2f}x): {verdict(served <= 2 * both)}")
    start = starts[0]
    memory = max(start["largest_process_rss_mb"], start["all_processes_pss_mb"])
    lines.append(f"- start to SERVING (added flags: {start['flags'] or 'none'}): median "
                 f"{start['start_s_median']:.2f} s: {verdict(start['start_s_median'] < 0.5)}; "
                 f"RSS of the largest serving process {start['largest_process_rss_mb']:.0f} MB,"
                 f" all processes {start['all_processes_pss_mb']:.0f} MB PSS (shared pages once;"
                 f" RSS sum {start['all_processes_rss_mb']:.0f} MB): "
                 f"{verdict(memory < 200)}")
    return lines
