#!/usr/bin/env python3
"""kernels.py: the kernels of one moejit forward under ncu, and the launch gaps of its graph.

    python3 bench/device/kernels.py [--ncu PATH] MOEJIT [layer options] --tokens T

Runs `MOEJIT bench --eager --no-floor` for the one token count T under ncu (clocks left alone),
then `MOEJIT bench --no-floor` without it for the graph replay time. A forward is the run of
kernels from one routing launch to the next. Per kernel of the forward it prints the median over
the timed forwards of its duration, DRAM bytes read and rate; then the sum of the durations, the
graph replay time of the forward and the difference: the time the graph spends between and around
kernels (launch gaps, ramp-up and drain that no kernel's duration holds).
"""
import csv
import io
import json
import re
import statistics
import subprocess
import sys

METRICS = "gpu__time_duration.sum,dram__bytes_read.sum"
# unit prefixes as ncu prints them: ns, us, ms (durations); byte, Kbyte, Mbyte, Gbyte (or B, KB, ...)
SCALE = {"n": 1.0, "u": 1e3, "m": 1e6, "s": 1e9, "k": 1e3, "g": 1e9}


def main(argv):
    ncu = "ncu"
    if len(argv) > 2 and argv[0] == "--ncu":
        ncu, argv = argv[1], argv[2:]
    if not argv or "--tokens" not in argv:
        sys.exit(__doc__)
    tokens = argv[argv.index("--tokens") + 1]
    if "," in tokens:
        sys.exit("kernels.py: one token count at a time")
    moejit, layer = argv[0], argv[1:]
    bench = [moejit, "bench", "--no-floor", "--warmup", "2", "--repeat", "7"] + layer
    prof = subprocess.run([ncu, "--csv", "--clock-control", "none", "--metrics", METRICS]
                          + bench + ["--eager"], capture_output=True, text=True)
    if prof.returncode != 0:
        sys.exit(f"kernels.py: ncu failed ({prof.returncode}):\n{prof.stderr[-3000:]}")
    rows = [l for l in prof.stdout.splitlines() if l.startswith('"')]
    kernels = {}  # ncu ID -> [name, grid, ns, bytes]
    for r in csv.DictReader(io.StringIO("\n".join(rows))):
        k = kernels.setdefault(int(r["ID"]), [r["Kernel Name"], r["Grid Size"], 0.0, 0.0])
        v = float(r["Metric Value"].replace(",", ""))
        unit = r["Metric Unit"]
        if r["Metric Name"] == "gpu__time_duration.sum":
            k[2] = v * SCALE[unit[0].lower()]
        else:
            k[3] = v * (SCALE[unit[0].lower()] if unit[0] in "KMG" else 1.0)
    seq = [kernels[i] for i in sorted(kernels)]
    forwards, cur = [], None
    for k in seq:
        if re.search(r"route", k[0]) and (cur is None or not re.search(r"route", cur[-1][0])):
            cur = []
            forwards.append(cur)
        if cur is not None:
            cur.append(k)
    if len(forwards) < 2:
        sys.exit("kernels.py: no forwards found in the profile")
    shape = [k[0] for k in forwards[-1]]
    timed = [f for f in forwards[1:] if [k[0] for k in f] == shape]
    print(f"tokens {tokens}: {len(timed)} forwards of {len(shape)} kernels (ncu, eager)")
    total = 0.0
    for i, name in enumerate(shape):
        ns = statistics.median(f[i][2] for f in timed)
        by = statistics.median(f[i][3] for f in timed)
        total += ns
        print(f"  {name:<28} grid {timed[0][i][1]:<16} {ns / 1e3:9.1f} us  "
              f"{by / 1e6:9.1f} MB  {by / ns:7.0f} GB/s")
    graph = subprocess.run(bench + ["--json", "-"], capture_output=True, text=True)
    if graph.returncode != 0:
        sys.exit(f"kernels.py: bench failed:\n{graph.stderr[-2000:]}")
    row = json.loads([l for l in graph.stdout.splitlines() if l.startswith("{")][-1])
    ms = row["ms"]
    print(f"  kernels {total / 1e3:.1f} us; graph replay {ms * 1e3:.1f} us; "
          f"between and around kernels {ms * 1e3 - total / 1e3:.1f} us")


if __name__ == "__main__":
    main(sys.argv[1:])
