"""toylab.training.allocator: glibc malloc keeps freed memory, so a training step stops faulting in fresh pages."""

import subprocess
import sys
import textwrap

import pytest

from toylab.training import allocator

# a fresh process: the setting is process-wide and cannot be undone
_SCRIPT = textwrap.dedent("""
    import resource, torch
    from toylab.training.allocator import reuse_freed_memory
    from toylab.data import make_dataset
    from toylab.model import AttnOnlyTransformer
    from toylab.training.optim import AdamW
    from toylab.training.presets import PRESETS
    torch.set_num_threads(1)
    p = PRESETS["induction-2l"]
    batch = make_dataset(p.data).sample(128, torch.Generator().manual_seed(0))
    model = AttnOnlyTransformer(p.model, seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    def faults_per_step(n=20):
        for _ in range(5):
            step()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            step()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n
    def step():
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    before = faults_per_step()
    applied = reuse_freed_memory()
    print(applied, before, min(faults_per_step() for _ in range(3)))
""")


@pytest.mark.skipif(allocator._glibc() is None, reason="reuse_freed_memory() applies to glibc only")
def test_a_training_step_faults_almost_no_pages_after_reuse_freed_memory():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    applied, before, after = out[0] == "True", float(out[1]), float(out[2])
    assert applied
    # A step allocates about 20 MB in blocks of 0.1-2 MB. Once freed memory is kept, the
    # heap still grows now and then (a few hundred pages at once), but most windows of 20
    # steps fault no page at all; under glibc's defaults every step faults hundreds.
    assert after < 5, (before, after)


def test_reuse_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    asked = []
    monkeypatch.setattr(allocator, "_glibc", lambda: asked.append(1))  # None: no glibc
    allocator.reuse_freed_memory.cache_clear()
    try:
        assert allocator.reuse_freed_memory() is False
        assert allocator.reuse_freed_memory() is False
        assert asked == [1]  # asked once per process
    finally:
        allocator.reuse_freed_memory.cache_clear()  # the next call asks the real C library again


def test_a_c_library_that_is_not_glibc_is_not_touched(monkeypatch):
    import ctypes

    class Musl:  # has mallopt, but not glibc's gnu_get_libc_version
        def mallopt(self, *args):
            raise AssertionError("mallopt called on a C library that is not glibc")

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Musl())
    assert allocator._glibc() is None

    def windows(name):  # CDLL(None) on Windows
        raise TypeError("expected str, got NoneType")

    monkeypatch.setattr(ctypes, "CDLL", windows)
    assert allocator._glibc() is None


def test_train_sets_it(monkeypatch):
    import toylab.training.train as train_module
    from toylab.training.presets import PRESETS

    calls = []
    monkeypatch.setattr(train_module, "reuse_freed_memory", lambda: calls.append(1) or True)
    p = PRESETS["bigram-0l"]
    train_module.train(p.model, p.data, train_module.TrainConfig(steps=2, eval_every=2), progress=False)
    assert calls == [1]
