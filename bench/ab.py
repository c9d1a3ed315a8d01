"""A/B pairs of bench/run.sh --only-ours: does a mechanism pay for itself?

Runs ``--pairs`` pairs of two server flag sets A and B (or two checkouts: ``--b-root``),
alternating the order (AB, BA, AB, ...) so that a drift of the machine favours neither, each
run after bench/wait_quiet.sh with ``--wait-quiet``. Keeps each run's figures as JSON in
``--dir`` (as it goes; a stopped series can be summarized with ``--summarize``), then prints
for every bar figure the median of A, of B, the median of the per-pair ratios B/A, and which
side wins by >= 10% (the issue's rule: a mechanism stays only where the median of at least 5
alternating pairs shows >= 10% on a bar's figure).

Usage: python bench/ab.py --a "" --b "--workers 1" [--pairs 5] [--wait-quiet]
           [--dir .work/ab] [--duration 5] [--ours-root DIR] [--b-root DIR] [--summarize]
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run_report import higher_is_better

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 0.10


def one_run(side: str, flags: str, index: int, args) -> dict:
    root = args.b_root if side == "B" and args.b_root else args.ours_root
    if args.wait_quiet:
        subprocess.run([str(ROOT / "bench" / "wait_quiet.sh")], check=True, timeout=3000)
    output = args.dir / f"{index:02d}-{side}.json"
    command = [str(ROOT / "bench" / "run.sh"), "--only-ours", "--server-flags", flags,
               "--label", f"A/B {side}: {flags or 'defaults'}", "--json", str(output),
               "--duration", str(args.duration), "--warmup", str(args.warmup),
               "--ours-root", str(root)]
    print(f"[{time.strftime('%H:%M:%S')}] {side} ({flags or 'defaults'}): "
          f"{shlex.join(command)}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=700)
    return json.loads(output.read_text())


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}"


def summary(runs: dict[str, list[dict]]) -> str:
    pairs = min(len(runs["A"]), len(runs["B"]))
    flags = {side: " ".join(runs[side][0]["server_flags"]) or "defaults" for side in runs}
    for side in runs:
        flags[side] += f" at {runs[side][0]['commit'][:7]}"
    out = [f"A: `{flags['A']}`, B: `{flags['B']}`; {pairs} pairs "
           "(order AB, BA, AB, ...); medians.", "",
           "| figure | median A | median B | median of pair ratios B/A | >= 10% |",
           "| --- | --- | --- | --- | --- |"]
    for label in runs["A"][0]["bar_figures"]:
        a = [run["bar_figures"][label] for run in runs["A"][:pairs]]
        b = [run["bar_figures"][label] for run in runs["B"][:pairs]]
        ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
        gain = ratio - 1 if higher_is_better(label) else 1 / ratio - 1  # > 0: B is better
        winner = "B" if gain >= THRESHOLD else "A" if gain <= -THRESHOLD / (1 + THRESHOLD) else "-"
        out.append(f"| {label} | {number(statistics.median(a))} | {number(statistics.median(b))} "
                   f"| {ratio:.3f} | {winner} |")
    out += ["", "Runs (`uptime` before each):", ""]
    for side in ("A", "B"):
        out += [f"- {side} {run['uptime']}" for run in runs[side]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="", help="server flags of A (default: none)")
    parser.add_argument("--b", required=True, help='server flags of B, e.g. "--workers 1"')
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=ROOT / ".work" / "ab")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--ours-root", type=Path, default=ROOT,
                        help="checkout whose server is measured (bench/run.py --ours-root)")
    parser.add_argument("--b-root", type=Path,
                        help="checkout measured as B (default: --ours-root): before/after")
    parser.add_argument("--wait-quiet", action="store_true",
                        help="bench/wait_quiet.sh before every run")
    parser.add_argument("--summarize", action="store_true",
                        help="only summarize the runs already in --dir")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    flags = {"A": args.a, "B": args.b}
    if not args.summarize:
        for pair in range(args.pairs):
            order = ("A", "B") if pair % 2 == 0 else ("B", "A")
            for position, side in enumerate(order):
                one_run(side, flags[side], 2 * pair + position, args)
    runs = {side: [json.loads(p.read_text()) for p in sorted(args.dir.glob(f"*-{side}.json"))]
            for side in ("A", "B")}
    print(summary(runs))


if __name__ == "__main__":
    main()
