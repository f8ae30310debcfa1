"""Draw the lab's data-flow diagram for the book's introduction.

    python chapters/images/make_intro_figure.py        # writes chapters/images/lab_flow.png

The PNG is committed; rerun this script only when the diagram should change.
It uses matplotlib alone (no network, no fonts beyond matplotlib's own DejaVu),
and strips the PNG's "Software" metadata so that reruns give identical bytes
on the same matplotlib version.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_name("lab_flow.png")

# colours: one per kind of step
DATA = "#dbeafe"  # blue: what the lab knows
MODEL = "#fef3c7"  # amber: what training makes
ANALYSIS = "#dcfce7"  # green: what we read out of it
CHECK = "#fce7f3"  # pink: the verdict
EDGE = "#334155"


def box(ax, x, y, w, h, title, body, colour):
    """A rounded box centred at (x, y) with a bold title and a smaller body."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            linewidth=1.8, edgecolor=EDGE, facecolor=colour,
        )
    )
    ax.text(x, y + h / 2 - 0.17, title, ha="center", va="top",
            fontsize=15, fontweight="bold", color="#0f172a")
    ax.text(x, y + h / 2 - 0.6, body, ha="center", va="top",
            fontsize=13.5, color="#1e293b", linespacing=1.3)


def arrow(ax, start, end, dashed=False):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=20,
            linewidth=2.0, color=EDGE,
            linestyle=(0, (5, 4)) if dashed else "-",
            shrinkA=0, shrinkB=0,
        )
    )


def main() -> None:
    # Drawn for a ~700 px wide book column: 10 in wide, fonts of 13.5-15 pt.
    fig, ax = plt.subplots(figsize=(10, 5.9))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5.9)
    ax.axis("off")

    w = 2.9
    x1, x2, x3 = 1.55, 5.0, 8.45
    gap = 0.06

    # row 1: data -> training -> checkpoint
    y1, h1 = 5.1, 1.5
    box(ax, x1, y1, w, h1, "1. Data",
        "synthetic languages with\nrules we wrote: bigrams,\nskip-trigrams, repeats", DATA)
    box(ax, x2, y1, w, h1, "2. Training",
        "seeded, deterministic;\nloss and metrics logged\nas the model learns", MODEL)
    box(ax, x3, y1, w, h1, "3. Checkpoint",
        "a small attention-only\ntransformer: W_E, W_Q,\nW_K, W_V, W_O, W_U", MODEL)
    arrow(ax, (x1 + w / 2 + gap, y1), (x2 - w / 2 - gap, y1))
    arrow(ax, (x2 + w / 2 + gap, y1), (x3 - w / 2 - gap, y1))

    # row 2: two ways of reading the checkpoint
    y2, h2 = 2.95, 1.3
    box(ax, x2, y2, w, h2, "4a. Read the weights",
        "QK and OV circuits,\neigenvalue, composition", ANALYSIS)
    box(ax, x3, y2, w, h2, "4b. Intervene",
        "ablation, patching,\ndirect logit attribution", ANALYSIS)
    top2 = y2 + h2 / 2 + gap
    arrow(ax, (x3, y1 - h1 / 2 - gap), (x3, top2))
    arrow(ax, (x3 - 0.9, y1 - h1 / 2 - gap), (x2 + 0.6, top2))

    # row 3: the verdict
    x5, w5, y3, h3 = (x2 + x3) / 2, x3 - x2 + w, 0.75, 1.25
    box(ax, x5, y3, w5, h3, "5. Check against the truth",
        "does the algorithm we read out match the rules\nthat generated the data?", CHECK)
    bottom2 = y2 - h2 / 2 - gap
    arrow(ax, (x2, bottom2), (x2, y3 + h3 / 2 + gap))
    arrow(ax, (x3, bottom2), (x3, y3 + h3 / 2 + gap))

    # the lab knows the rules: a dashed path from the data down to the check
    left5 = x5 - w5 / 2 - gap
    ax.plot([x1, x1], [y1 - h1 / 2 - gap, y3], color=EDGE, linewidth=2.0,
            linestyle=(0, (5, 4)))
    arrow(ax, (x1, y3), (left5, y3), dashed=True)
    ax.text(x1, 2.45, "the lab wrote\nthe rules, so\nit knows the\nright answer",
            ha="center", va="center", fontsize=13.5, style="italic", color="#334155",
            linespacing=1.3,
            bbox=dict(boxstyle="round,pad=0.35", facecolor="white", edgecolor="none"))

    fig.tight_layout(pad=0.15)
    fig.savefig(OUT, dpi=150, metadata={"Software": None}, facecolor="white")
    plt.close(fig)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
