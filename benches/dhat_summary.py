#!/usr/bin/env python3
"""Summarizes a valgrind DHAT heap profile (dhat.out / --dhat-out-file JSON) of the gateway.

    valgrind --tool=dhat --dhat-out-file=dhat.json target/release/ehr-gateway serve …   (then Ctrl-C)
    python3 benches/dhat_summary.py dhat.json [--top 12]

benches/memory.py --wrap "valgrind --tool=dhat --dhat-out-file=dhat.json" runs cases under it.
Prints the totals (bytes and blocks allocated over the run, bytes live at the heap's peak) and the
allocation sites that allocated the most and that held the most at the peak, each named by its first
frames inside ehr_gateway (or the first frame outside the allocator when none).
"""

import argparse
import json

ALLOCATOR = ("alloc::", "__rust", "malloc", "realloc", "calloc", "core::", "<alloc::", "hashbrown", "std::")


def site(frames, ftbl, depth=3):
    names = [ftbl[i] for i in frames]
    ours = [n for n in names if "ehr_gateway" in n]
    chosen = ours[:depth] or [n for n in names if not any(a in n for a in ALLOCATOR)][:depth] or names[:depth]
    # "0x4A2B3C: ehr_gateway::x::y (file.rs:12:5)" -> "ehr_gateway::x::y (file.rs:12)"
    short = []
    for n in chosen:
        n = n.split(": ", 1)[-1]
        short.append(n[:140])
    return " <- ".join(short)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--top", type=int, default=10)
    a = p.parse_args()
    d = json.load(open(a.file))
    pps, ftbl = d["pps"], d["ftbl"]
    mib = lambda b: b / (1024 * 1024)  # noqa: E731
    total = sum(pp["tb"] for pp in pps)
    blocks = sum(pp["tbk"] for pp in pps)
    at_peak = sum(pp["gb"] for pp in pps)
    print(f"allocated over the run: {mib(total):.1f} MiB in {blocks} blocks; live at the heap peak: {mib(at_peak):.1f} MiB")
    print(f"\nmost bytes allocated (top {a.top}):")
    for pp in sorted(pps, key=lambda p: -p["tb"])[: a.top]:
        print(f"  {mib(pp['tb']):9.1f} MiB {pp['tbk']:>9} blocks  {site(pp['fs'], ftbl)}")
    print(f"\nmost bytes live at the heap peak (top {a.top}):")
    for pp in sorted(pps, key=lambda p: -p["gb"])[: a.top]:
        if pp["gb"] == 0:
            break
        print(f"  {mib(pp['gb']):9.1f} MiB {pp['gbk']:>9} blocks  {site(pp['fs'], ftbl)}")


if __name__ == "__main__":
    main()
