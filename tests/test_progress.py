"""The progress bar: short logs when the output is not a terminal."""

import io

from toylab.training.progress import Progress


def test_log_lines_at_quarters_and_once_at_the_end():
    out = io.StringIO()
    with Progress(8, "work", stream=out, log_every=0.25) as bar:
        for _ in range(8):
            bar.update(1, loss=1.5)
        for _ in range(5):
            bar.update(0)  # polling after the end prints nothing more
    lines = out.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["1/8", "2/8", "4/8", "6/8", "8/8"]  # started, quarters, done
    assert lines[-1].startswith("work [########################] 8/8") and lines[-1].endswith("loss=1.500")


def test_disabled_bar_prints_nothing():
    out = io.StringIO()
    with Progress(3, stream=out, enabled=False) as bar:
        bar.update(3)
    assert out.getvalue() == ""
