"""The mutant harness (tools/mutants/) stays in step with the solutions, and expect_tensor's diagnoses.

Running the mutants is `make test-mutants` (minutes); here only: every mutant still applies to its
solution (its `old` text is found, the mutated function compiles) and differs from it, and the
generic diagnoses of `expect_tensor` name what they should.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from toylab.course import answers

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "tools" / "mutants"
FILES = sorted(MUTANTS.glob("ch[0-9][0-9]_*.py"))


def _load(path):
    sys.path.insert(0, str(MUTANTS))
    try:
        spec = importlib.util.spec_from_file_location("mutants_" + path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.MUTANTS
    finally:
        sys.path.remove(str(MUTANTS))


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_every_mutant_applies_to_its_solution(path):
    solution = ROOT / "solutions" / f"{path.stem}.py"
    assert solution.is_file(), f"{path.name}: no solutions/{path.stem}.py"
    source = solution.read_text()
    spec = importlib.util.spec_from_file_location("sol_" + path.stem, solution)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for m in _load(path):
        assert m.keys, f"{path.name}: mutant {m.func} / {m.what} has no keywords"
        assert m.source(source) != "", m.what
        assert callable(m.build(module, source)), m.what


def test_expect_tensor_names_common_relations():
    e = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    for wrong, word in ((-e, "opposite sign"), (e / 8 ** 0.5, "times"), (e.transpose(-1, -2), "transpose"),
                        (torch.roll(e, 1, dims=1), "shifted by one")):
        with pytest.raises(AssertionError, match=word):
            answers.expect_tensor(wrong, e, "x")
    p = torch.softmax(e, -1)
    with pytest.raises(AssertionError, match="log-probabilities"):
        answers.expect_tensor(p.log(), p, "p")
    with pytest.raises(AssertionError, match="sum to 1"):
        answers.expect_tensor(e.exp(), p, "p")
    with pytest.raises(AssertionError, match="bits"):
        answers.expect_number(2.0 / 0.6931471805599453, 2.0, "H", tol=1e-6)


def test_expect_tensor_rows_that_sum_to_one_beside_empty_rows():
    """A table of conditional distributions may hold all-zero rows (a character never seen):
    unnormalised rows are still named."""
    p = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), -1)
    p[2] = 0.0
    counts = p * torch.tensor([3.0, 5.0, 1.0, 2.0])[:, None]
    with pytest.raises(AssertionError, match="sum to 1"):
        answers.expect_tensor(counts, p, "P")
