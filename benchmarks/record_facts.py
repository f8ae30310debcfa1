"""Record the key-value memory numbers over seeds, for the chapter "MLPs and neurons".

Writes ``chapters/data/ch11_facts.json`` (the chapter reads and prints it) with

- ``reports``: :func:`toylab.features.fact_features.fact_report` for seeds 0, 1, 2 of the
  ``facts-1l`` recipe (seed 0 is the shipped checkpoint; seeds 1 and 2 are retrained, about
  25 s each on one thread): accuracy, neurons per fact, facts per neuron, the ablation
  check and the SAE's MCC against the planted directions;
- ``sweep``: :func:`toylab.features.fact_features.facts_sweep` with its defaults (table
  sizes 16..128 in a 32-neuron MLP, seeds 0-2): facts per neuron against the analytic count.

Everything runs on one thread (``torch.set_num_threads(1)``); the whole run takes a few
minutes. The chapter would need as long to recompute these, which is why they are recorded.

    python benchmarks/record_facts.py                  # both parts
    python benchmarks/record_facts.py --only reports   # or --only sweep
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "data" / "ch11_facts.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("reports", "sweep"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from toylab.features.fact_features import fact_report, facts_sweep
    from toylab.files import atomic_write

    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rec = {"script": "benchmarks/record_facts.py", "torch": torch.__version__,
           "python": platform.python_version(), "threads": 1, **{k: old[k] for k in ("reports", "sweep")
                                                                   if k in old}}
    t0 = time.perf_counter()
    if args.only in (None, "reports"):
        rec["reports"] = []
        for seed in (0, 1, 2):
            t = time.perf_counter()
            rec["reports"].append(fact_report(seed))
            print(f"seed {seed}: {time.perf_counter() - t:.0f} s", rec["reports"][-1], flush=True)
    if args.only in (None, "sweep"):
        t = time.perf_counter()
        rec["sweep_args"] = {"table_sizes": [16, 32, 64, 128], "d_mlp": 32, "seeds": [0, 1, 2],
                             "d_model": 4, "steps": 600, "coverage": 0.8}
        rec["sweep"] = facts_sweep()
        print(f"sweep: {time.perf_counter() - t:.0f} s", flush=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write(args.out, lambda p: Path(p).write_text(json.dumps(rec, indent=1) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
