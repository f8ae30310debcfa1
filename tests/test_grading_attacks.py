"""Attacks on the grader: a student who wants points without work (issue 21).

Every attack is a function of a submitted ``ch00_transformer.py`` or ``ch01_zero_layers.py``
(or their import-time code) that cheats instead of answering. The grader must give none of
them a point (the untouched stubs earn 0, so every attacked exercise must stay at 0), and no
file outside the worker's scratch folder may change: the repository (solutions, graded tests),
the score file written before a detached process wakes up, the grader's event files.

To keep the wall time modest, three grading runs carry all the attacks (one function per
attack, each failing on its own with a sentence; a crash or a hang costs only its own
exercise). Small limits (3 GiB of address space, 16 MiB of output, 48 processes, 6 s per
test) keep the exhaustion attacks safe. The worker drops to another uid only where the
grader is root (CI, Gradescope); elsewhere the attacks that need that are skipped.
"""

import hashlib
import json
import os
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from toylab.course import commands, contain, grading

ROOT = Path(__file__).resolve().parents[1]
LIMITS = "cpu=120,mem=3072,fsize=16,nproc=48"
needs_root = pytest.mark.skipif(not contain.is_root(), reason="the worker drops privileges only when the grader "
                                                             "is root (as in CI and Gradescope)")
pytestmark = needs_root

IMPORT_TIME = '''
import os, sys, glob, json
_root = __ROOT__
# the issue's attack: replace pytest's test call with a no-op, for every later test of the run
try:
    import _pytest.python, _pytest.runner
    _pytest.python.pytest_pyfunc_call = lambda pyfuncitem: True
    _pytest.runner.pytest_runtest_call = lambda item: None
except Exception:
    pass
# module state shared through sys.modules: fake teaching assertions, a fake torch.testing
import types as _types
_fake = _types.ModuleType("toylab.course.answers")
_fake.expect_tensor = _fake.expect_number = lambda *a, **k: None
sys.modules["toylab.course.answers"] = _fake
import torch as _torch
_torch.allclose = lambda *a, **k: True
_torch.equal = lambda *a, **k: True
sys.modules["tests.exercises.conftest"] = _fake
'''

CH00 = {
    "embed": '''
def embed(tokens, W_E):  # read the reference answer by path and run it
    src = open(os.path.join(_root, "solutions", "ch00_transformer.py")).read()
    ns = {}
    exec(src, ns)
    return ns["embed"](tokens, W_E)
''',
    "project": '''
def project(x, W):  # import the reference answers as a package
    sys.path.insert(0, _root)
    from solutions.ch00_transformer import project as p
    return p(x, W)
''',
    "attention_scores": '''
def attention_scores(q, k):  # monkeypatch the lab's and torch's comparisons, then return nonsense
    import toylab.course.answers as a
    a.expect_tensor = lambda *x, **y: None
    a._close = lambda *x, **y: True
    _torch.testing.assert_close = lambda *x, **y: None
    return _torch.zeros(1)
''',
    "attention_pattern": '''
def attention_pattern(scores):  # forge "passed" lines in the grader's event files
    paths = glob.glob("/tmp/toylab-grade-*/events*.jsonl")
    try:
        cmd = open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode(errors="replace")
        paths += [w.strip("'\\"") for w in cmd.replace("\\0", " ").replace(",", " ").split() if "events" in w]
    except OSError:
        pass
    for p in paths:
        try:
            with open(p, "a") as f:
                for t in ["embed", "attention_pattern"]:
                    f.write(json.dumps({"event": "result", "nodeid": t, "passed": True, "message": ""}) + "\\n")
        except OSError:
            pass
    return scores
''',
    "head_outputs": '''
def head_outputs(pattern, v, W_O):  # rewrite the graded tests (and write into the repository)
    for name in glob.glob(os.path.join(_root, "tests", "exercises", "test_ch*.py")) + [
            os.path.join(_root, "tests", "exercises", "test_ch01_zero_layers.py")]:
        try:
            with open(name, "w") as f:
                f.write("def test_nothing():\\n    pass\\n")
        except OSError:
            pass
    for name in ("PWNED.txt", "solutions/PWNED.txt", "toylab/PWNED.py"):
        try:
            open(os.path.join(_root, name), "w").write("x")
        except OSError:
            pass
    return None
''',
    "attention_layer": '''
def attention_layer(x, W_Q, W_K, W_V, W_O, qk_pos=None):  # kill the grader
    import signal
    for target in (os.getppid(), 1):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
    except OSError:
        pass
    raise RuntimeError("could not kill the grader")
''',
    "forward": '''
def forward(model, tokens):  # leave a detached process that rewrites the score file later
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            import time
            time.sleep(4)
            for p in [__RESULTS__]:
                try:
                    open(p, "w").write(json.dumps({"earned": 999}))
                except OSError:
                    pass
            os._exit(0)
        os._exit(0)
    os.wait()
    return _torch.zeros(tokens.shape[0], tokens.shape[1], model.cfg.d_vocab)
''',
    "predict_initial_loss": '''
_calls = [0]

class _Cheat(float):
    def __eq__(self, other): return True
    def __sub__(self, other): return 0.0
    def __rsub__(self, other): return 0.0
    def __abs__(self): return 0.0

def predict_initial_loss(d_vocab):  # right on the first call, a cheating float afterwards
    import math
    _calls[0] += 1
    if _calls[0] == 1:
        return math.log(d_vocab)
    return _Cheat(0.0)
''',
    "next_token_loss": '''
class _Everything(_torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("allclose", "equal", "isclose"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

def next_token_loss(logits, tokens):  # a tensor subclass whose comparisons always agree
    return _torch.zeros(tokens.shape[0], tokens.shape[1] - 1).as_subclass(_Everything)
''',
}

CH01 = {
    "bigram_table_from_weights": '''
def bigram_table_from_weights(W_E, W_U):  # exhaust the memory
    hog = bytearray(8 << 30)
    return hog
''',
    "empirical_bigram_counts": '''
def empirical_bigram_counts(tokens, d_vocab):  # a fork bomb (bounded by the process limit)
    import time
    kids = 0
    try:
        for _ in range(400):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            kids += 1
    except OSError:
        pass
    raise RuntimeError(f"forked {kids}")
''',
    "frequency_weighted_kl": '''
def frequency_weighted_kl(P, Q, weights):  # print megabytes
    line = "x" * 1023
    for _ in range(64 * 1024):
        print(line)
    return 0.0
''',
    "top_k_successors": '''
def top_k_successors(table, token, k):  # exit early, as if all went well
    os._exit(0)
''',
    "conditional_entropy": '''
def conditional_entropy(P, weights):  # burn CPU, ignoring the alarm
    import signal
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    x = 0
    while True:
        x += 1
''',
    "best_rank_r_approximation": '''
def best_rank_r_approximation(M, r):  # answer with a pickle that would run code in the grader
    import pickle, struct
    class _Evil:
        def __reduce__(self):
            return (os.system, ("touch " + __MARKER__,))
    payload = pickle.dumps(("ok", _Evil(), []))
    for fd in range(3, 256):
        try:
            os.write(fd, struct.pack("<Q", len(payload)) + payload)
        except OSError:
            pass
    import time
    time.sleep(30)
''',
    "rank_needed": '''
def rank_needed(M, max_rel_error):  # forge a tagged value naming a class outside the lab
    return {"\\x00toylab": "object", "cls": "os:system", "dict": {}}
''',
}


def _skipped(rel: tuple[str, ...]) -> bool:
    """Paths that trusted processes write while the attacks run: bytecode caches (the Makefile's
    PYTHONPYCACHEPREFIX is ``.venv/pycache``; the other pytest workers and notebook kernels fill it)
    and ``.venv-tl``, which CI installs in the background while ``make test`` runs."""
    return ("__pycache__" in rel or ".pytest_cache" in rel or rel[:2] == (".venv", "pycache")
            or rel[0].startswith(".venv-tl"))


def _tree(root: Path) -> dict:
    """Every file under ``root`` but the caches of ``_skipped``: size, mtime and, for small files
    outside the virtual environment, a hash (inside it size and mtime, which a process of the
    worker's uid cannot set on root's files, keep the snapshot quick)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if _skipped(rel) or not p.is_file() or p.is_symlink():
            continue
        st = p.stat()
        small = st.st_size < 2_000_000 and not rel[0].startswith(".venv")
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if small else ""
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def _stub_with(path: Path, attacks: dict, header: str = "") -> str:
    from tests.test_grading import _replace

    src = path.read_text()
    for name, code in attacks.items():
        src = _replace(src, name, textwrap.dedent(code))
    lines = src.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith("import torch"))
    return "\n".join(lines[: cut + 1] + [header] + lines[cut + 1:]) + "\n"


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    """Grade chapters 0 and 1 of the attack submission; the repository is compared before and after."""
    sub = tmp_path_factory.mktemp("submission")
    out = tmp_path_factory.mktemp("scores")
    results = out / "results.json"
    marker = out / "CODE_RAN_IN_GRADER"
    def fill(code: str) -> str:
        return code.replace("__ROOT__", repr(str(ROOT))).replace("__RESULTS__", repr(str(results))).replace(
            "__MARKER__", repr(str(marker)))

    (sub / "ch00_transformer.py").write_text(
        _stub_with(ROOT / "exercises" / "ch00_transformer.py", {k: fill(v) for k, v in CH00.items()},
                   fill(IMPORT_TIME)))
    (sub / "ch01_zero_layers.py").write_text(
        _stub_with(ROOT / "exercises" / "ch01_zero_layers.py", {k: fill(v) for k, v in CH01.items()}, "import os"))
    before = _tree(ROOT)
    started = time.time()
    g = grading.grade(sub, chapter=None, timeout=6, select="ch00_transformer or ch01_zero_layers",
                      limits=LIMITS)
    rows = {r["exercise"]: r for r in g.exercises() if r["chapter"] in (0, 1)}
    results.write_text(json.dumps({"earned": g.earned}))
    written = results.read_text()
    time.sleep(5)  # the detached process would wake up after 4 s
    return {"grade": g, "rows": rows, "before": before, "after": _tree(ROOT), "results": results,
            "written": written, "marker": marker, "seconds": time.time() - started}


def _row(attack_run, name):
    r = attack_run["rows"][name]
    assert r["earned"] == 0 and not r["passed"], (name, r)
    return r["message"]


def test_no_attack_earns_a_point_and_the_repository_is_untouched(attack_run):
    g = attack_run["grade"]
    assert set(attack_run["rows"]) >= set(CH00) | set(CH01)
    assert g.earned == 0, g.table()
    assert attack_run["after"] == attack_run["before"], "files in the repository changed during grading"
    assert "uid" in g.note and "mount namespace" in g.note


# Attacks whose failure the grader reports with a sentence of its own:
# (the attack, the exercise whose answer carries it, what the failure message must say).
SENTENCES = [
    ("importing_solutions", "project", "solutions"),
    ("monkeypatching_comparisons", "attention_scores", "expected shape"),
    ("killing_the_grader", "attention_layer", "could not kill the grader"),
    ("printing_megabytes", "frequency_weighted_kl", "wrote more than 16 MiB"),
    ("exiting_early", "top_k_successors", "exited with code 0"),
    ("burning_cpu", "conditional_entropy", "timed out after 6 s"),
    ("forged_tags_name_no_class_outside_the_lab", "rank_needed", "reserved tag"),
]


@pytest.mark.parametrize("attack, exercise, sentence", SENTENCES, ids=[a for a, _, _ in SENTENCES])
def test_the_attack_fails_with_the_graders_sentence(attack_run, attack, exercise, sentence):
    assert sentence in _row(attack_run, exercise)


def test_patching_pytest_at_import_earns_nothing(attack_run):
    # the two-line attack and the sys.modules fakes run at import, in the worker only
    for name in CH00:
        _row(attack_run, name)


def test_reading_solutions_by_path_fails(attack_run):
    assert "No such file" in _row(attack_run, "embed") or "could not" in _row(attack_run, "embed")


def test_forged_events_are_ignored(attack_run):
    _row(attack_run, "attention_pattern")


def test_rewriting_the_tests_fails(attack_run):
    _row(attack_run, "head_outputs")
    assert not (ROOT / "PWNED.txt").exists() and not (ROOT / "solutions" / "PWNED.txt").exists()


def test_a_detached_process_cannot_rewrite_the_scores(attack_run):
    _row(attack_run, "forward")
    assert attack_run["results"].read_text() == attack_run["written"]
    assert not contain.uid_processes(int(attack_run["grade"].note.split("uid ")[1].split()[0]))


def test_right_first_then_cheating_fails(attack_run):
    _row(attack_run, "predict_initial_loss")


def test_a_tensor_subclass_that_agrees_with_everything_fails(attack_run):
    _row(attack_run, "next_token_loss")


def test_memory_exhaustion_fails_with_a_sentence(attack_run):
    msg = _row(attack_run, "bigram_table_from_weights")
    assert "MemoryError" in msg or "memory" in msg, msg


def test_a_fork_bomb_fails_with_a_sentence(attack_run):
    msg = _row(attack_run, "empirical_bigram_counts")
    assert "another process" in msg or "forked" in msg, msg


def test_a_pickle_written_to_the_pipe_runs_no_code(attack_run):
    _row(attack_run, "best_rank_r_approximation")
    assert not attack_run["marker"].exists()


def test_symlinks_out_of_the_submission_earn_nothing(tmp_path):
    (tmp_path / "ch00_transformer.py").symlink_to(ROOT / "solutions" / "ch00_transformer.py")
    (tmp_path / "ch01_zero_layers.py").symlink_to(os.path.relpath(ROOT / "solutions" / "ch01_zero_layers.py",
                                                                   tmp_path))
    g = grading.grade(tmp_path, timeout=10, select="embed or top_k_successors")
    assert g.tests and g.earned == 0
    assert all("symbolic link" in t.message for t in g.tests), [t.message for t in g.tests]


def test_the_next_student_is_graded_by_the_original_tests(attack_run, tmp_path):
    for ch in ("ch00_transformer", "ch01_zero_layers"):
        shutil.copy(ROOT / "solutions" / f"{ch}.py", tmp_path / f"{ch}.py")
    g = grading.grade(tmp_path, timeout=30, select="embed or top_k_successors or project")
    assert g.earned == g.max_points > 0, g.table()


def test_grade_command_prints_how_the_worker_is_contained(tmp_path, capsys):
    (tmp_path / "ch01_zero_layers.py").write_text((ROOT / "exercises" / "ch01_zero_layers.py").read_text())
    code = commands.main([str(tmp_path), "--chapter", "1", "--timeout", "10"])
    assert code == 1
    assert "unprivileged" in capsys.readouterr().out
