"""The suite's outputs: scores aggregated over seeds, written as ``suite.md``, ``suite.json``, ``suite.png``.

Each cell is ``mean ± spread`` over the seeds that were scored (excluded seeds are listed, with the
reason, and enter no mean); the spread is the population standard deviation over those seeds (0 for
one seed), and ``(n=k)`` says how many seeds a cell has when it is not every scored seed. ``suite.md``
has one table per score (rows: models; columns: ``method/corruption``); the figure shows each
method's AUROC (MCC, selectivity for feature methods) per model, one dot per seed. All three files
are written atomically (:func:`toylab.files.atomic_write_many`).

:func:`seed_summary` prints one recorded number over seeds the same way, for the chapters that read
``chapters/data/seeds.json`` (``benchmarks/record_seeds.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from toylab.files import atomic_write_many

MAIN = {"relu-sae": "mcc", "topk-sae": "mcc", "probe": "selectivity"}  # the headline score of feature methods
TABLES = ("auroc", "precision", "recall", "faithfulness", "seconds", "mcc", "selectivity")


def aggregate(results: list[dict]) -> dict:
    """``{model: {column: {score: {"mean", "spread", "n", "values"}}}}`` over the scored seeds."""
    out: dict = {}
    for r in results:
        if r["status"] != "scored":
            continue
        for col, scores in r["scores"].items():
            cell = out.setdefault(r["model"], {}).setdefault(col, {})
            for k, v in scores.items():
                cell.setdefault(k, {"values": []})["values"].append(v)
    for cols in out.values():
        for cell in cols.values():
            for k, c in cell.items():
                vals = c["values"]
                if all(isinstance(v, (int, float)) for v in vals):
                    m = sum(vals) / len(vals)
                    c.update(mean=m, spread=math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)), n=len(vals))
                else:
                    c.update(mean=None, spread=None, n=len(vals))
    return out


def seed_summary(rows: list[dict], *keys: str, digits: int = 2) -> str:
    """One recorded number over seeds: ``"0.95   0.93 ± 0.02 (0.91 to 0.95)"``.

    ``rows``: one dict per seed, seed 0 first (a chapter's list in ``seeds.json``); ``keys``: the
    path to the number in each row (``row[k1][k2]...``). Printed: seed 0's value, then the mean ±
    the spread (the population standard deviation, as in the suite's tables) and the range, each
    to ``digits`` decimals (a rounded 0 prints without a sign).
    """
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"rows must be a non-empty list of dicts (one per seed), got {rows!r:.60}")
    if not keys:
        raise ValueError("keys must name the number in each row, e.g. 'induction_score'")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 6:
        raise ValueError(f"digits must be an integer from 0 to 6, got {digits!r}")
    vals = []
    for i, r in enumerate(rows):
        v = r
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                raise ValueError(f"row {i} has no entry {'/'.join(keys)!r} (missing {k!r})")
            v = v[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"row {i}'s {'/'.join(keys)!r} must be a finite number, got {v!r}")
        vals.append(float(v))
    mean = sum(vals) / len(vals)
    spread = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))

    def f(v: float) -> str:
        return f"{round(v, digits) + 0.0:.{digits}f}"

    return f"{f(vals[0])}   {f(mean)} ± {f(spread)} ({f(min(vals))} to {f(max(vals))})"


def _cell(c: dict | None, n_seeds: int) -> str:
    if c is None:
        return ""
    if c["mean"] is None:
        return "n/a"
    s = f"{c['mean']:.2f} ± {c['spread']:.2f}"
    return s if c["n"] == n_seeds else f"{s} (n={c['n']})"


def markdown(results: list[dict], agg: dict, settings: dict, seconds: float) -> str:
    lines = ["# The methods suite", "",
             f"Seeds {list(settings['seeds'])}, corruptions {list(settings['sources'])}, sweeps of "
             f"{settings['n_sweep']} thresholds (+ the recommended one), {seconds:.0f} s in all. "
             "Each cell: mean ± standard deviation over the scored seeds.", ""]
    excluded = [r for r in results if r["status"] != "scored"]
    if excluded:
        lines += ["Excluded seeds:", ""] + [f"- {r['model']} seed {r['seed']}: {r['reason']}" for r in excluded] + [""]
    truths = [r for r in results if r.get("truth")]
    if truths:
        lines += ["Truth checks (resampling): " + "; ".join(
            f"{r['model']} s{r['seed']} kept {r['truth']['kept']:.3f}, removed {r['truth']['removed']:.3f}"
            for r in truths), ""]
    n_seeds = {m: sum(r["model"] == m and r["status"] == "scored" for r in results) for m in agg}
    for score in TABLES:
        cols = sorted({c for cols in agg.values() for c, cell in cols.items() if score in cell or (
            score == "auroc" and "n/a" in cell)})
        if not cols:
            continue
        lines += [f"## {score}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m, mc in agg.items():
            cells = [_cell(mc.get(c, {}).get(score) or (mc.get(c, {}).get("n/a") if score == "auroc" else None),
                           n_seeds[m]) for c in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(agg: dict):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = list(agg)
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 2.6 * max(len(models), 1)), squeeze=False)
    for ax, m in zip(axes[:, 0], models):
        cols = sorted(agg[m])
        for i, c in enumerate(cols):
            score = MAIN.get(c, "auroc")
            cell = agg[m][c].get(score)
            if not cell or cell["mean"] is None:
                continue
            ax.scatter([i] * len(cell["values"]), cell["values"], s=12, color="tab:blue", alpha=0.7)
            ax.hlines(cell["mean"], i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([f"{c} ({MAIN.get(c, 'auroc')})" if c in MAIN else c for c in cols], rotation=60,
                           ha="right", fontsize=7)
        ax.set_ylim(-0.05 if m not in ("facts-1l",) else -1.05, 1.05)
        ax.set_title(m, fontsize=9)
        ax.set_ylabel("AUROC")
    fig.tight_layout()
    return fig


def write_outputs(out_dir, results: list[dict], settings: dict, seconds: float) -> list[Path]:
    """Write ``suite.md``, ``suite.json`` and ``suite.png`` into ``out_dir`` (created), atomically."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results)
    md = markdown(results, agg, settings, seconds)
    data = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "seconds": seconds, "results": results, "aggregate": agg}
    fig = figure(agg)

    def text(s):
        return lambda tmp: Path(tmp).write_text(s)

    try:
        return atomic_write_many([(out / "suite.md", text(md + "\n")),
                                  (out / "suite.json", text(json.dumps(data, indent=1, default=str))),
                                  (out / "suite.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))])
    finally:
        plt.close(fig)
