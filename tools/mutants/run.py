"""The mutant harness: are plausible wrong answers caught, and do the messages name the mistake?

    python tools/mutants/run.py              # every chapter that has a mutants file
    python tools/mutants/run.py ch01 ch06    # some chapters
    python tools/mutants/run.py -v           # also list every mutant that is missed or not named

For each ``tools/mutants/chNN_<topic>.py`` (a list of mutants, see ``mutant.py``) whose graded
tests ``tests/exercises/test_chNN_<topic>.py`` exist, one pytest process runs that chapter's
tests on the solutions and then once per mutant (``plugin.py``). It prints, per chapter, the
mutants caught and the share of their failure messages that name the mistake, and writes every
result to ``tools/mutants/results.json`` (not tracked). Exit status 1 when the solutions fail a
test, a mutant cannot be built, or the totals are below ``--min-caught`` / ``--min-named``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def chapters(selected):
    for f in sorted(HERE.glob("ch[0-9][0-9]_*.py")):
        if selected and not any(f.stem.startswith(s) for s in selected):
            continue
        test = ROOT / "tests" / "exercises" / f"test_{f.stem}.py"
        if test.is_file():
            yield f, test


def run_chapter(mfile: Path, test: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = dict(os.environ, TOYLAB_MUTANTS_FILE=str(mfile), TOYLAB_MUTANTS_OUT=str(out),
                   PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        env.pop("TOYLAB_ANSWERS", None)  # the trusted solutions/, patched one function at a time
        env.pop("TOYLAB_GRADE_ISOLATE", None)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "plugin",
                               str(test.relative_to(ROOT))], cwd=ROOT, env=env, capture_output=True, text=True)
        if not out.is_file():
            return {"chapter": mfile.stem, "error": (proc.stdout + proc.stderr)[-3000:], "mutants": [],
                    "baseline_failures": []}
        return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chapters", nargs="*", help="chapter prefixes (ch01, ch06_superposition...)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--min-caught", type=float, default=0.0, help="fail below this caught share (0-1)")
    ap.add_argument("--min-named", type=float, default=0.0, help="fail below this named share (0-1)")
    args = ap.parse_args(argv)
    results, bad = [], False
    print(f"{'chapter':40s} {'mutants':>7s} {'caught':>12s} {'named':>12s} {'s':>6s}")
    tot = [0, 0, 0]
    for mfile, test in chapters(args.chapters):
        r = run_chapter(mfile, test)
        results.append(r)
        if "error" in r:
            print(f"{mfile.stem:40s} harness failed:\n{r['error']}")
            bad = True
            continue
        ms = r["mutants"]
        n = len(ms)
        caught = [m for m in ms if m["status"] == "caught"]
        named = [m for m in caught if m["named"]]
        tot[0] += n
        tot[1] += len(caught)
        tot[2] += len(named)
        pc = 100 * len(caught) / n if n else 0
        pn = 100 * len(named) / len(caught) if caught else 0
        print(f"{r['chapter']:40s} {n:7d} {len(caught):4d} ({pc:5.1f}%) {len(named):4d} ({pn:5.1f}%) "
              f"{r['seconds']:6.1f}")
        for f in r["baseline_failures"]:
            print(f"   SOLUTION FAILS: {f[:300]}")
            bad = True
        for m in ms:
            if m["status"] == "broken":
                print(f"   BROKEN mutant {m['func']} / {m['what']}: {m['message']}")
                bad = True
            elif args.verbose and m["status"] == "missed":
                print(f"   missed  {m['func']}: {m['what']}")
            elif args.verbose and not m["named"]:
                print(f"   unnamed {m['func']}: {m['what']} (keys {m['keys']})\n"
                      f"           {m['message'][:400]!r}")
    n, c, k = tot
    pc = c / n if n else 0
    pn = k / c if c else 0
    print(f"{'total':40s} {n:7d} {c:4d} ({100 * pc:5.1f}%) {k:4d} ({100 * pn:5.1f}%)")
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    if pc < args.min_caught or pn < args.min_named:
        print(f"below the bar: caught {100 * pc:.1f}% (min {100 * args.min_caught:.0f}%), "
              f"named {100 * pn:.1f}% (min {100 * args.min_named:.0f}%)")
        bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
