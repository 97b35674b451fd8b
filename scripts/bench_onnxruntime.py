#!/usr/bin/env python3
"""Time ONNX files written by `cim export` / `cim bench infer --onnx-dir DIR` with
onnxruntime (CPU), for comparison with `cim bench infer`. Optional: cim does not need
onnxruntime; install it with `pip install onnxruntime` to run this script.

    cim bench infer --onnx-dir /tmp/onnx
    python3 scripts/bench_onnxruntime.py /tmp/onnx --batch 1,8

With --compare X.npy Y.npy and one model file, it instead runs X through the model and
prints the largest absolute and relative difference from Y (e.g. the output of
`cim infer --model`), to check a file against a second runtime.
"""
import argparse
import glob
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def median_ms(run, seconds):
    run()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < 50 and time.perf_counter() - start < seconds):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help=".onnx files or directories of them")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    p.add_argument("--compare", nargs=2, metavar=("X.npy", "Y.npy"))
    a = p.parse_args()
    files = []
    for path in a.paths:
        files += sorted(glob.glob(os.path.join(path, "*.onnx"))) if os.path.isdir(path) else [path]
    if a.compare:
        if len(files) != 1:
            sys.exit("--compare takes one model")
        s = session(files[0], a.threads)
        x, want = np.load(a.compare[0]).astype(np.float32), np.load(a.compare[1])
        got = s.run(None, {s.get_inputs()[0].name: x})[0]
        err = np.abs(got - want).max()
        print(f"{files[0]}: output {list(got.shape)}, max abs error {err:.3e}, "
              f"max rel error {err / np.abs(want).max():.3e}")
        return
    print(f"{'model':<28} {'batch':>5} {'runtime':<12} {'median ms':>11} {'img/s':>9}")
    for f in files:
        s = session(f, a.threads)
        inp = s.get_inputs()[0]
        for n in [int(b) for b in a.batch.split(",")]:
            x = np.random.default_rng(7).standard_normal([n] + list(inp.shape[1:])).astype(np.float32)
            ms = median_ms(lambda: s.run(None, {inp.name: x}), a.seconds)
            name = os.path.splitext(os.path.basename(f))[0]
            print(f"{name:<28} {n:>5} {'onnxruntime':<12} {ms:>11.1f} {n / ms * 1e3:>9.2f}")


if __name__ == "__main__":
    main()
