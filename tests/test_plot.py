"""Every figure renders to a PNG with the expected panels, and bad shapes are clear errors."""

import io

import matplotlib
import pytest
import torch

from toylab import plot
from toylab.presets import load_shipped

matplotlib.use("Agg")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    matplotlib.pyplot.close(fig)
    return buf.getvalue()


def test_attention_patterns_one_panel_per_head():
    pattern = torch.softmax(torch.randn(2, 5, 5), -1)
    fig = plot.attention_patterns(pattern, labels=list("abcde"), titles=["0.0", "0.1"])
    assert [a.get_title() for a in fig.axes[:2]] == ["0.0", "0.1"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list("abcde")
    assert png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"\[n_heads, pos, pos\]"):
        plot.attention_patterns(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="3 labels for 5 positions"):
        plot.attention_patterns(pattern, labels=list("abc"))


def test_composition_marks_the_baseline():
    fig = plot.composition(torch.tensor([[0.4, 0.1], [0.12, 0.1]]), 0.1, ["0.0", "0.1"], ["1.0", "1.1"])
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
