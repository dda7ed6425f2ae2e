"""Memory of the operator's drift windows: 1,000 policies' full windows, side by side.

Each policy's window (:class:`qscale.operator.driftwatch._Window`, the shipped model's drift
reference, a 1 h window at 15 s: 30 slots of 8 observations) filled with the same inputs, in a
fresh interpreter per layout; the RSS difference before/after, median of 3 runs:

* ``ring``: the operator's layout, one ``[30, bins]`` uint16 ring per policy;
* ``lists``: the layout it replaced (commit 2de4a51 and before), 30 slots each holding one
  int64 array per feature.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_drift_memory.py [--policies 1000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import gc, json, sys
import numpy as np
from qscale import drift, features
from qscale.operator import driftwatch as dw
from qscale.policy.default import default_model_path

layout, n = sys.argv[1], int(sys.argv[2])
manifest = json.loads((default_model_path() / "manifest.json").read_text())
ref = drift.Reference.from_manifest(manifest)
obs = np.random.default_rng(0).normal(size=(64, features.N_FEATURES))

def rss():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024

gc.collect()
before = rss()
keep = []
for p in range(n):
    if layout == "ring":
        w = dw._Window("m", 3600.0, 15.0, slot_s=120.0)
        for slot in range(30):
            for k in range(8):
                w.add(slot, ref, obs[(slot * 8 + k) % 64])
    else:
        w = []
        for slot in range(30):
            counts = [np.zeros(k, dtype=np.int64) for k in ref.n_bins]
            for k in range(8):
                for f, b in enumerate(ref.bins(obs[(slot * 8 + k) % 64])):
                    counts[f][b] += 1
            w.append((slot, counts))
    keep.append(w)
gc.collect()
print(json.dumps({"mb": rss() - before, "bins": sum(ref.n_bins)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = {}
    for layout in ("ring", "lists"):
        runs = []
        for _ in range(args.repeats):
            got = subprocess.run(
                [sys.executable, "-c", CHILD, layout, str(args.policies)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads(got.stdout))
        out[layout] = statistics.median(r["mb"] for r in runs)
        print(f"{layout:6s} {args.policies} full windows: {out[layout]:.1f} MB "
              f"({runs[0]['bins']} bins per slot)")  # fmt: skip
    print(f"ring / lists: {out['ring'] / out['lists']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
