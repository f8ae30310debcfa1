"""Every figure renders to a PNG with the expected panels, and bad shapes are clear errors."""

import io

import matplotlib
import pytest
import torch

from toylab import plot
from toylab.training.presets import load_shipped

matplotlib.use("Agg")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    matplotlib.pyplot.close(fig)
    return buf.getvalue()


def test_attention_patterns_one_panel_per_head():
    pattern = torch.softmax(torch.randn(2, 5, 5), -1)
    fig = plot.attention_patterns(pattern, labels=list("abcde"), titles=["L0H0", "L0H1"])
    assert [a.get_title() for a in fig.axes[:2]] == ["L0H0", "L0H1"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list("abcde")
    assert png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"\[n_heads, pos, pos\]"):
        plot.attention_patterns(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="3 labels for 5 positions"):
        plot.attention_patterns(pattern, labels=list("abc"))


def test_composition_marks_the_baseline():
    fig = plot.composition(torch.tensor([[0.4, 0.1], [0.12, 0.1]]), 0.1, ["L0H0", "L0H1"], ["L1H0", "L1H1"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.40\n(4.0x)" in texts and "baseline 0.10" in fig.axes[0].get_title()
    png_bytes(fig)
    with pytest.raises(ValueError, match="do not match"):
        plot.composition(torch.zeros(2, 3), 0.1, ["a", "b"], ["c", "d"])


def test_eigenvalues_title_shows_the_copying_score():
    fig = plot.eigenvalues(torch.tensor([[2.0 + 0j, 1.0 + 0j], [1j, -1j]]), titles=["copy", "rotate"])
    assert fig.axes[0].get_title() == "copy: copying +1.00"
    assert fig.axes[1].get_title() == "rotate: copying +0.00"
    png_bytes(fig)


def test_circuit_head_scores_history_patching_render():
    png_bytes(plot.circuit(torch.randn(6, 6), title="full OV"))
    png_bytes(plot.head_scores({"induction": torch.rand(2, 2), "previous token": torch.rand(2, 2)}))
    history = load_shipped("induction-2l").history
    fig = plot.training_history(history)
    assert fig.axes[0].get_xlabel() == "training step"
    png_bytes(fig)
    png_bytes(plot.patching(torch.randn(4, 7), ["L0H0", "L0H1", "L1H0", "L1H1"]))
    with pytest.raises(ValueError, match="at least one evaluation"):
        plot.training_history([])
    with pytest.raises(ValueError, match="2-D"):
        plot.circuit(torch.zeros(3))


def test_shared_scales_and_readable_ticks():
    # vmax / lim put several panels on one scale; tick labels are at least 8 pt
    fig = plot.circuit(torch.randn(5, 5), ticks=list("abcde"), vmax=7.0)
    assert fig.axes[0].images[0].get_clim() == (-7.0, 7.0)
    assert min(t.get_fontsize() for t in fig.axes[0].get_xticklabels()) >= 8
    png_bytes(fig)
    fig = plot.patching(torch.randn(2, 3), ["a", "b"], ["0", "1", "2"], vmax=2.5)
    assert fig.axes[0].images[0].get_clim() == (-2.5, 2.5)
    assert min(t.get_fontsize() for t in fig.axes[0].get_xticklabels()) >= 8
    png_bytes(fig)
    fig = plot.eigenvalues(torch.tensor([[2.0 + 0j, 1.0 + 0j]]), lim=5.0)
    assert fig.axes[0].get_xlim() == (-5.0, 5.0) and fig.axes[0].get_ylim() == (-5.0, 5.0)
    png_bytes(fig)
    fig = plot.attention_patterns(torch.softmax(torch.randn(1, 4, 4), -1), labels=list("abcd"))
    assert min(t.get_fontsize() for t in fig.axes[0].get_yticklabels()) >= 8
    png_bytes(fig)
    n_open = len(matplotlib.pyplot.get_fignums())
    for bad in (lambda: plot.circuit(torch.randn(3, 3), vmax=0.0),
                lambda: plot.patching(torch.randn(2, 3), ["a", "b"], vmax=-1.0),
                lambda: plot.eigenvalues(torch.ones(1, 2, dtype=torch.cfloat), lim="big")):
        with pytest.raises(ValueError, match="positive number"):
            bad()
    assert len(matplotlib.pyplot.get_fignums()) == n_open     # nothing half-drawn left open


def test_composition_shares_a_scale_when_asked():
    fig = plot.composition(torch.tensor([[0.4, 0.1]]), 0.1, ["L0H0"], ["L1H0", "L1H1"], span=0.5)
    assert fig.axes[0].images[0].get_clim() == pytest.approx((-0.4, 0.6))
    assert [t.get_color() for t in fig.axes[0].texts] == ["black", "black"]
    png_bytes(fig)
    fig = plot.composition(torch.tensor([[0.4, 0.1]]), 0.1, ["L0H0"], ["L1H0", "L1H1"])
    assert [t.get_color() for t in fig.axes[0].texts] == ["white", "black"]
    png_bytes(fig)
    with pytest.raises(ValueError, match="positive number"):
        plot.composition(torch.tensor([[0.4, 0.1]]), 0.1, ["L0H0"], ["L1H0", "L1H1"], span=0)


def test_training_history_on_a_log_step_axis():
    history = [{"step": s, "loss_first": 5.0, "loss_repeat": 5.0 - s / 100, "best_induction": s / 400,
                "best_prev_token": s / 400} for s in (0, 10, 100, 400)]
    fig = plot.training_history(history, log_steps=True)
    assert fig.axes[0].get_xscale() == "log"
    assert list(fig.axes[0].lines[0].get_xdata()) == [10, 100, 400]     # step 0 left out
    png_bytes(fig)
    with pytest.raises(ValueError, match="after step 0"):
        plot.training_history(history[:1], log_steps=True)
