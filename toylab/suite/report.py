"""The suite's outputs: scores aggregated over seeds, written as ``suite.md``, ``suite.json``, ``suite.png``.

``suite.json`` (read by the chapter; keep it stable) has the keys:

- ``"settings"``: the run's settings (``seeds``, ``sources``, ``n_sweep``, ``sp_steps``, ``n_task``,
  ``sae_steps``, ``methods``; lists);
- ``"seconds"``: the wall seconds of the scoring run; ``"timing"``: ``{"wall", "cpu", "load_average",
  "jobs", "cores"}`` (wall and CPU seconds of the whole command from its start, its workers' CPU
  included, writing the outputs excluded; the 1-minute load average when the run started);
- ``"results"``: one record per (model, seed): ``{"model", "seed", "status": "scored" | "excluded",
  "reason", "truth", "scores", "seconds"}``; ``truth`` is ``{"edges", "kept", "removed"}`` (the
  intervention check) or, for a negative control, ``{"dense": true, "best_kept", "best_heads",
  "max_heads"}``; ``scores`` maps a column (``"method/corruption"``, ``"relu-sae"``, ``"topk-sae"``,
  ``"probe"``) to its numbers (discovery: ``auroc``, ``precision``, ``recall`` (not on a negative
  control), ``faithfulness``, ``coverage``, ``size``, ``confidence``, ``seconds``, ``cpu_seconds``;
  features: ``mcc`` or ``accuracy``, ``control_accuracy``, ``selectivity``; and ``seconds``), or to
  ``{"n/a": reason}``;
- ``"aggregate"``: ``{model: {column: {score: {"mean", "spread", "n", "values"}}}}`` over the scored seeds;
- ``"negative_controls"``: the names of the negative-control models in the run.

Each cell is ``mean ± spread`` over the seeds that were scored (excluded seeds are listed, with the
reason, and enter no mean); the spread is the population standard deviation over those seeds (0 for
one seed), and ``(n=k)`` says how many seeds a cell has when it is not every scored seed. ``suite.md``
starts with the run's timing (wall, CPU, load average at the start), then where each method fails
(:func:`failures_table`: its lowest score over the planted models, whether that is a failure, and the
trap that model is built for), has one table per score (rows:
models; columns: ``method/corruption``) and a side-by-side table of each method's confidence
(:func:`toylab.suite.scores.confidence`) on the planted models and on the negative controls, with
the negative control's faithfulness and circuit size: a high confidence there is a confident sparse
circuit where none exists. The figure shows each method's AUROC (MCC, selectivity for feature
methods) per model, one dot per seed, and a last panel of confidence, planted models against the
negative controls. All three files
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
TABLES = ("auroc", "precision", "recall", "faithfulness", "confidence", "seconds", "mcc", "selectivity")
CONFIDENT = 0.5  # a confidence at or above this on a negative control is flagged as a confident wrong answer


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


def _negatives(agg: dict) -> list[str]:
    from toylab.suite.planted import NEGATIVE_CONTROLS

    return [m for m in agg if m in NEGATIVE_CONTROLS]


def _mean_sd(vals: list[float]) -> str:
    m = sum(vals) / len(vals)
    return f"{m:.2f} ± {math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)):.2f}"


def confidence_table(agg: dict) -> list[str]:
    """The side-by-side table (module doc): per discovery column, the confidence on the planted models
    (mean ± standard deviation over their per-model means, and the lowest model mean) and, per negative
    control, its confidence, faithfulness and size; ``confident wrong`` where confidence >= :data:`CONFIDENT`."""
    neg = _negatives(agg)
    planted = [m for m in agg if m not in neg]
    cols = sorted({c for m in agg for c, cell in agg[m].items() if "confidence" in cell})
    if not cols:
        return []
    head = ["method/corruption", "planted: confidence", "planted: lowest"]
    for n in neg:
        head += [f"{n}: confidence", f"{n}: faithfulness", f"{n}: size", f"{n}: verdict"]
    lines = ["## confidence: planted models against the negative control", "",
             "confidence = coverage - size (toylab.suite.scores.confidence): the share of the behaviour "
             "(score-based methods: of the total |score|) the method says its recommended circuit carries, minus "
             "the share of the graph it keeps. On the negative control no circuit of at most half the heads keeps "
             f"90 % of the behaviour, so a confidence >= {CONFIDENT} there is a confident sparse circuit where "
             "none exists.", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for c in cols:
        means = [agg[m][c]["confidence"]["mean"] for m in planted if "confidence" in agg[m].get(c, {})]
        row = [c, _mean_sd(means) if means else "", f"{min(means):.2f}" if means else ""]
        for n in neg:
            cell = agg[n].get(c, {})
            if "confidence" not in cell:
                row += ["", "", "", ""]
                continue
            conf = cell["confidence"]["mean"]
            row += [_cell(cell["confidence"], cell["confidence"]["n"]), _cell(cell["faithfulness"],
                    cell["faithfulness"]["n"]), _cell(cell["size"], cell["size"]["n"]),
                    "confident wrong" if conf >= CONFIDENT else "low confidence"]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


FAILS = {"auroc": 0.9, "faithfulness": 0.8, "mcc": 0.9, "selectivity": 0.1}  # below: the method fails there


def _trap(model: str) -> str:
    from toylab.suite.entries import FEATURES, registry
    from toylab.suite.planted import PLANTED

    known = {**PLANTED, **registry(), **FEATURES}
    return getattr(known.get(model), "trap", "")


def _worst(agg: dict, models: list[str], cols: list[str], score: str):
    """``(mean, model, column)`` of the lowest mean ``score`` over ``models`` x ``cols``, or ``None``."""
    cells = [(agg[m][c][score]["mean"], m, c) for m in models for c in cols
             if agg[m].get(c, {}).get(score, {}).get("mean") is not None]
    return min(cells) if cells else None


def failures_table(results: list[dict], agg: dict) -> list[str]:
    """``## where each method fails``: per method, its lowest AUROC and faithfulness (discovery; over the
    planted models and every corruption) or its lowest MCC or selectivity (features), whether that is a
    failure (below :data:`FAILS`), and why: the trap the model is built for or, for a resample cell
    whose truth has ``pos ->`` edges, that both runs share their positions (so those edges have no
    effect and no ranking by effect puts them first); for a probe, its control accuracy."""
    neg = _negatives(agg)
    planted = [m for m in agg if m not in neg]
    pos_truth = {r["model"] for r in results if any(e.startswith("pos->") for e in
                                                    (r.get("truth") or {}).get("edges", []))}
    methods = sorted({c.split("/")[0] for m in planted for c in agg[m] if "/" in c})
    lines = ["## where each method fails", "",
             f"Per method, its lowest score over the planted models (and corruptions); a failure is an AUROC "
             f"below {FAILS['auroc']}, a faithfulness below {FAILS['faithfulness']}, an MCC below "
             f"{FAILS['mcc']} or a selectivity below {FAILS['selectivity']}. Why: what the model is built to "
             "trip. Chapter 13 puts the mechanism on screen for backup heads, saturated attention, ACDC's edge "
             "order, the corruption, the probe's control and the SAE; for the other cells the trap is the likely "
             "cause, not a tested one.", "",
             "| method | lowest | where | fails | why |", "|---|---|---|---|---|"]
    for method in methods:
        cols = sorted({c for m in planted for c in agg[m] if c.split("/")[0] == method})
        for score in ("auroc", "faithfulness"):
            w = _worst(agg, planted, cols, score)
            if w is None:
                continue
            v, m, c = w
            why = _trap(m)
            if score == "auroc" and c.endswith("/resample") and m in pos_truth:
                why = ("under resampling both runs share their positions, so the truth's pos edges have no "
                       "effect and rank below any false edge with one")
            lines.append(f"| {method} | {score} {v:.2f} | {m}, {c.split('/')[1]} | "
                         f"{'yes' if v < FAILS[score] else 'no'} | {why} |")
    for method, score in MAIN.items():
        w = _worst(agg, planted, [method], score)
        if w is None:
            continue
        v, m, _ = w
        why = _trap(m)
        if score == "selectivity":
            cell = agg[m][method]
            why = (f"the control task is as easy as the real one here (control accuracy "
                   f"{cell['control_accuracy']['mean']:.2f}, accuracy {cell['accuracy']['mean']:.2f})")
        lines.append(f"| {method} | {score} {v:.2f} | {m} | {'yes' if v < FAILS[score] else 'no'} | {why} |")
    return lines + [""]


def markdown(results: list[dict], agg: dict, settings: dict, seconds: float, timing: dict | None = None) -> str:
    t = timing or {}
    when = (f"{t['wall']:.0f} s wall, {t['cpu']:.0f} s CPU (the command from its start and its workers), "
            f"--jobs {t['jobs']} on {t['cores']} cores, load average {t['load_average']:.1f} at the start"
            if {"wall", "cpu", "jobs", "cores", "load_average"} <= set(t) else f"{seconds:.0f} s in all")
    lines = ["# The methods suite", "",
             f"Run: {when}.", "",
             f"Seeds {list(settings['seeds'])}, corruptions {list(settings['sources'])}; ACDC over a sweep of "
             f"{settings['n_sweep']} thresholds (+ the recommended one); subnetwork probing one run of "
             f"{settings['sp_steps']} steps, ranked by its mask logits. "
             "Each cell: mean ± standard deviation over the scored seeds.", ""]
    excluded = [r for r in results if r["status"] != "scored"]
    if excluded:
        lines += ["Excluded seeds:", ""] + [f"- {r['model']} seed {r['seed']}: {r['reason']}" for r in excluded] + [""]
    truths = [r for r in results if r.get("truth") and "kept" in r["truth"]]
    if truths:
        lines += ["Truth checks (resampling): " + "; ".join(
            f"{r['model']} s{r['seed']} kept {r['truth']['kept']:.3f}, removed {r['truth']['removed']:.3f}"
            for r in truths), ""]
    dense = [r for r in results if r.get("truth", {}).get("dense")]
    if dense:
        lines += ["Negative-control checks (resampling; the best circuit of at most half the heads): " + "; ".join(
            f"{r['model']} s{r['seed']} {r['truth']['best_heads']} keep {r['truth']['best_kept']:.3f}"
            for r in dense), ""]
    lines += failures_table(results, agg)
    lines += confidence_table(agg)
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
            if not any(cells):  # e.g. a negative control has no AUROC, precision or recall
                continue
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(agg: dict):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    neg = _negatives(agg)
    models = [m for m in agg if m not in neg]
    conf_cols = sorted({c for m in agg for c, cell in agg[m].items() if "confidence" in cell})
    n_ax = len(models) + bool(conf_cols)
    fig, axes = plt.subplots(n_ax, 1, figsize=(10, 2.6 * max(n_ax, 1)), squeeze=False)
    if conf_cols:
        ax = axes[-1, 0]
        for i, c in enumerate(conf_cols):
            for m in agg:
                cell = agg[m].get(c, {}).get("confidence")
                if cell:
                    ax.scatter([i + (0.15 if m in neg else -0.15)] * len(cell["values"]), cell["values"], s=12,
                               color="tab:red" if m in neg else "tab:blue", alpha=0.6)
        ax.axhline(CONFIDENT, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(conf_cols)))
        ax.set_xticklabels(conf_cols, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("confidence")
        ax.set_title("confidence: planted models (blue) against the negative control" +
                     (f" {', '.join(neg)} (red)" if neg else ""), fontsize=9)
    for ax, m in zip(axes[:len(models), 0], models):
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


def write_outputs(out_dir, results: list[dict], settings: dict, seconds: float,
                  timing: dict | None = None) -> list[Path]:
    """Write ``suite.md``, ``suite.json`` and ``suite.png`` into ``out_dir`` (created), atomically."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results)
    md = markdown(results, agg, settings, seconds, timing)
    data = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "seconds": seconds, "timing": timing or {}, "results": results, "aggregate": agg,
            "negative_controls": _negatives(agg)}
    fig = figure(agg)

    def text(s):
        return lambda tmp: Path(tmp).write_text(s)

    try:
        return atomic_write_many([(out / "suite.md", text(md + "\n")),
                                  (out / "suite.json", text(json.dumps(data, indent=1, default=str))),
                                  (out / "suite.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))])
    finally:
        plt.close(fig)
