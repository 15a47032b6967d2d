#!/usr/bin/env python3
"""power.py: the SM clock and board power while a forward is replayed, and cuBLAS's bf16 GEMM rate
in a short burst against a sustained run, on one GPU machine.

    python3 bench/device/power.py MOEJIT [layer options] --tokens T

Samples nvidia-smi every 100 ms (SM clock, power draw, active clock-throttle reasons) while
`MOEJIT bench --no-floor --repeat 100` replays the forward of T tokens, and prints the median clock
and power over the samples taken under load (power above 300 W) and the throttle reasons seen. Then,
with PyTorch present, times torch.mm on bf16 8192 x 8192 matrices (cuBLAS): 10 calls after two idle
seconds (the burst the floor's GEMM rate is measured over) and 400 calls back to back, the median
TFLOP/s of calls 0-10, 10-50, 50-100, 100-200 and 200-400, with the clock samples of that run.
"""
import statistics
import subprocess
import sys
import threading
import time

QUERY = "clocks.sm,power.draw,clocks_throttle_reasons.active"


class Sampler:
    """nvidia-smi samples (MHz, W, reasons) from start() to stop()."""

    def __init__(self):
        self.rows = []

    def start(self):
        self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                      "-lms", "100"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            f = [x.strip() for x in line.split(",")]
            try:
                self.rows.append((float(f[0]), float(f[1]), f[2]))
            except (ValueError, IndexError):
                pass

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        loaded = [r for r in self.rows if r[1] > 300.0]
        if not loaded:
            return "no sample above 300 W"
        return (f"{len(loaded)} samples above 300 W: SM clock median {statistics.median(r[0] for r in loaded):.0f} "
                f"MHz (min {min(r[0] for r in loaded):.0f}), power median {statistics.median(r[1] for r in loaded):.0f} W, "
                f"throttle reasons {sorted(set(r[2] for r in loaded))}")


def main(argv):
    if not argv or "--tokens" not in argv:
        sys.exit(__doc__)
    s = Sampler()
    s.start()
    out = subprocess.run([argv[0], "bench", "--no-floor", "--repeat", "100"] + argv[1:],
                         capture_output=True, text=True)
    print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else out.stderr[-2000:])
    print("  forward replays:", s.stop())
    try:
        import torch
    except ImportError:
        print("no PyTorch: cuBLAS not timed")
        return
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")

    def run(calls):
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
        for start, end in ev:
            start.record()
            torch.mm(a, b)
            end.record()
        torch.cuda.synchronize()
        return [2 * n ** 3 / (start.elapsed_time(end) * 1e9) for start, end in ev]

    run(3)
    time.sleep(2)
    print(f"cuBLAS bf16 {n}^3, 10 calls after 2 s idle: median {statistics.median(run(10)):.1f} TFLOP/s")
    time.sleep(2)
    s = Sampler()
    s.start()
    rates = run(400)
    for lo, hi in ((0, 10), (10, 50), (50, 100), (100, 200), (200, 400)):
        print(f"  400 calls back to back, calls {lo}-{hi}: median {statistics.median(rates[lo:hi]):.1f} TFLOP/s")
    print("  ", s.stop())


if __name__ == "__main__":
    main(sys.argv[1:])
