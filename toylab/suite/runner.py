"""Running the suite: each (model, seed) trained or loaded, its truth checked, every method scored.

**Models.** Seed 0 of a preset with a shipped checkpoint is that checkpoint; any other seed is
trained with the preset's recipe (no off-probe evaluations, one evaluation at the end) and cached in
``$TOYLAB_CACHE`` (default ``~/.cache/toylab``) under ``suite/PRESET-sSEED-KEY.pt``, where ``KEY``
hashes the preset and the source of ``toylab/model.py``, ``blocks.py``, ``training/`` and ``data/``
(so a code change retrains); the file is written atomically, never inside the repository.

**Jobs.** The run has two phases over one pool of ``jobs`` processes (``spawn``, one torch thread
each): first every (preset, seed) that is neither shipped nor cached is trained, once even where two
suite models share a preset (``mixture-induction``, ``mixture-skiptrigram``), the longest recipes
first; then one job per (model, seed) scores it, the slowest kinds first. Seeds train one per
process because that was the fastest way here (``benchmarks/bench_seeds.py``: batched seeds, by
``vmap`` or a seed axis, cost 0.95-1.45x the CPU time per seed-step of one-by-one training, and
one-by-one runs at 38-40 % of the matmul-peak bound). A line per finished job (its wall seconds)
and a progress bar go to stderr.

**Exclusion.** A circuit seed whose truth cannot be read (:class:`~toylab.suite.entries.NoPlantedCircuit`)
or fails the intervention check under resampling (``kept >= 0.9``, ``removed >= 0.8``,
:func:`~toylab.suite.truth.check_truth`) is reported with the reason and left out of every mean. A
negative control (:data:`toylab.suite.planted.NEGATIVE_CONTROLS`) is checked the other way round
(:func:`~toylab.suite.truth.check_dense`): a seed where a circuit of at most half the heads keeps
90 % of the behaviour is no negative control and is excluded; the others are scored without a truth
(confidence, faithfulness and size; :mod:`toylab.suite.scores`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import torch

from toylab.suite.truth import SOURCES

METHODS_ALL = ("patching", "eap", "eap-ig", "atp", "atp*", "acdc", "sp")
QUICK = {"seeds": (0,), "sources": ("resample",), "n_sweep": 8, "sp_steps": 50, "n_task": 32, "sae_steps": 300,
         "methods": METHODS_ALL}
FULL = {"seeds": (0, 1, 2), "sources": SOURCES, "n_sweep": 20, "sp_steps": 150, "n_task": 64, "sae_steps": 1500,
        "methods": METHODS_ALL}


def cache_dir() -> Path:
    return Path(os.environ.get("TOYLAB_CACHE", Path.home() / ".cache" / "toylab")) / "suite"


def _code_key(preset) -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha1(repr(preset).encode())
    files = [root / "model.py", root / "blocks.py"] + sorted((root / "training").glob("*.py")) + sorted(
        (root / "data").glob("*.py"))
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _cached_path(preset_name: str, seed: int) -> Path | None:
    """Where ``preset_name`` at ``seed`` is read from: ``None`` for the shipped checkpoint, else the cache path."""
    from toylab.training.presets import get_preset, shipped_path

    p = get_preset(preset_name)
    if seed == p.seed and shipped_path(preset_name).is_file():
        return None
    return cache_dir() / f"{preset_name}-s{seed}-{_code_key(p)}.pt"


def needs_training(preset_name: str, seed: int) -> bool:
    """Whether ``load_or_train`` would train (neither shipped nor cached)."""
    path = _cached_path(preset_name, seed)
    return path is not None and not path.is_file()


def load_or_train(preset_name: str, seed: int):
    """The model of ``preset_name`` at ``seed``: the shipped checkpoint, the cache, or trained now (module doc)."""
    from toylab.training.checkpoint import load_checkpoint, save_checkpoint
    from toylab.training.presets import get_preset, load_shipped
    from toylab.training.train import train

    p = get_preset(preset_name)
    path = _cached_path(preset_name, seed)
    if path is None:
        return load_shipped(preset_name).model
    if path.is_file():
        return load_checkpoint(path).model
    once = dataclasses.replace(p.train, eval_every=p.train.steps)
    result = train(p.model, p.data, once, seed=seed, progress=False, off_probe=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, result.model, data_spec=p.data, train_spec=dataclasses.asdict(once), seed=seed)
    return result.model


def suite_models() -> dict:
    """Every model the suite can run: the circuit models (:func:`~toylab.suite.entries.registry`), the
    negative controls and the feature models, by suite name."""
    from toylab.suite.entries import FEATURES, registry
    from toylab.suite.planted import NEGATIVE_CONTROLS, PLANTED

    return {**registry(), **{n: PLANTED[n] for n in sorted(NEGATIVE_CONTROLS)}, **FEATURES}


def train_job(preset_name: str, seed: int) -> dict:
    """Train (and cache) one seed in a worker: ``{"preset", "seed", "seconds"}``."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load_or_train(preset_name, seed)
    return {"preset": preset_name, "seed": seed, "seconds": time.perf_counter() - t0}


def run_job(name: str, seed: int, settings: dict) -> dict:
    """One (model, seed): ``{"model", "seed", "status": "scored" | "excluded", "reason", "truth", "scores",
    "seconds"}`` (``truth``: the intervention check, or for a negative control the dense check)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = _score_job(name, seed, settings)
    return {**out, "seconds": time.perf_counter() - t0}


def _score_job(name: str, seed: int, settings: dict) -> dict:
    from toylab.discovery.graph import Graph
    from toylab.suite.entries import FEATURES, NoPlantedCircuit, registry
    from toylab.suite.planted import NEGATIVE_CONTROLS
    from toylab.suite.scores import PROBE_SITES, circuit_scores, probe_scores, sae_scores
    from toylab.suite.truth import check_dense, check_truth, truth_holds

    entry = suite_models()[name]
    model = load_or_train(entry.preset, seed)
    out = {"model": name, "seed": seed, "status": "scored", "reason": "", "truth": {}, "scores": {}}
    if name in FEATURES:
        out["scores"] = sae_scores(model, entry, seed, steps=settings["sae_steps"])
        return out
    graph = Graph(model)
    task = entry.make_task(model, seed, settings["n_task"])
    kw = dict(n_task=settings["n_task"], n_sweep=settings["n_sweep"], sp_steps=settings["sp_steps"])
    if name in NEGATIVE_CONTROLS:
        d = check_dense(model, graph, task, "resample")
        out["truth"] = {"dense": True, "best_kept": d.best_kept, "best_heads": list(d.best_heads),
                        "max_heads": d.max_heads}
        if not d.passed:
            return {**out, "status": "excluded", "reason": f"heads {list(d.best_heads)} alone keep {d.best_kept:.2f} "
                    f"of the behaviour (a negative control needs < 0.90 for every set of <= {d.max_heads} heads)"}
        out["scores"] = circuit_scores(model, entry, seed, settings["methods"], settings["sources"], dense=True, **kw)
        return out
    try:
        truth = entry.truth(model, graph)
    except NoPlantedCircuit as err:
        return {**out, "status": "excluded", "reason": str(err)}
    r = check_truth(model, graph, graph.circuit(truth), task, "resample")
    kept, removed = r.kept, r.removed
    out["truth"] = {"edges": sorted(truth), "kept": kept, "removed": removed}
    if not truth_holds(kept, removed):
        return {**out, "status": "excluded", "reason": f"the truth keeps {kept:.2f} and removes {removed:.2f} "
                "of the behaviour (needs >= 0.90 and >= 0.80)"}
    out["scores"] = circuit_scores(model, entry, seed, settings["methods"], settings["sources"], **kw)
    if name in PROBE_SITES and "probe" in settings.get("features", ("probe",)):
        out["scores"].update(probe_scores(model, name, seed))
    return out


def _train_cost(preset_name: str) -> int:
    from toylab.training.presets import get_preset

    p = get_preset(preset_name)
    return p.train.steps * p.model.n_layers * p.model.d_model


def training_plan(every: dict, todo: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ``(preset, seed)`` pairs the ``(model, seed)`` jobs ``todo`` need trained (``every``: suite name
    -> entry with a ``preset``), each once, the longest recipes first."""
    return sorted({(every[m].preset, s) for m, s in todo if needs_training(every[m].preset, s)},
                  key=lambda ps: (-_train_cost(ps[0]), ps))


def _line(text: str, enabled: bool) -> None:
    if enabled:
        sys.stderr.write(f"\r{text}\n")
        sys.stderr.flush()


def run_suite(models: list[str], settings: dict, jobs: int = 1, progress: bool = True) -> list[dict]:
    """Every (model, seed) of ``models`` at ``settings`` (:data:`QUICK` or :data:`FULL`), ``jobs`` processes
    (module doc: the seeds to train first, then the scoring)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from toylab.training.progress import Progress

    every = suite_models()
    todo = [(m, s) for m in models for s in settings["seeds"]]
    presets = training_plan(every, todo)
    # scoring order: the largest graphs first (their ACDC and SP take longest), feature models last
    scoring = sorted(todo, key=lambda ms: (hasattr(every[ms[0]], "hook"), -_train_cost(every[ms[0]].preset)))
    results = []
    with Progress(len(presets) + len(todo), "suite", enabled=progress) as bar:
        def done_train(r):
            _line(f"trained {r['preset']} seed {r['seed']} in {r['seconds']:.0f} s", progress)
            bar.update(1)

        def done_score(r):
            what = r["status"] if r["status"] == "scored" else f"excluded ({r['reason']})"
            _line(f"{r['model']} seed {r['seed']}: {what} in {r['seconds']:.0f} s", progress)
            results.append(r)
            bar.update(1)

        if jobs <= 1:
            for p, s in presets:
                done_train(train_job(p, s))
            for m, s in scoring:
                done_score(run_job(m, s, settings))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                for f in as_completed([pool.submit(train_job, p, s) for p, s in presets]):
                    done_train(f.result())
                for f in as_completed([pool.submit(run_job, m, s, settings) for m, s in scoring]):
                    done_score(f.result())
    order = {k: i for i, k in enumerate(todo)}
    return sorted(results, key=lambda r: order[r["model"], r["seed"]])


def _process_wall() -> float | None:
    """Seconds since this process started (Linux ``/proc``; ``None`` elsewhere): the command's wall time
    with its imports."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return float(Path("/proc/uptime").read_text().split()[0]) - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_seconds() -> float:
    """CPU seconds of this process since it started and of its finished workers."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cmd_suite(args) -> int:
    """``toylab suite [--quick] [--jobs N] [--out DIR] [--models ...] [--methods ...] [--seeds ...]``."""
    from toylab.suite.report import write_outputs

    known = list(suite_models())
    models = args.models or known
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ValueError(f"unknown suite model(s) {unknown}; the suite's models are {known}")
    settings = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        if any(s < 0 for s in args.seeds):
            raise ValueError(f"--seeds must be seeds >= 0, got {args.seeds}")
        settings["seeds"] = tuple(args.seeds)
    if args.methods:
        from toylab.suite.scores import METHODS
        bad = [m for m in args.methods if m not in METHODS + ("probe",)]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; the methods are {list(METHODS) + ['probe']}")
        settings["methods"] = tuple(m for m in args.methods if m in METHODS)
        settings["features"] = tuple(m for m in args.methods if m == "probe")
    if isinstance(args.jobs, int) and args.jobs < 1:
        raise ValueError(f"--jobs must be a positive number of processes, got {args.jobs}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0, age = time.perf_counter(), _process_wall()
    results = run_suite(models, settings, jobs=args.jobs, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    # wall and CPU from the command's start (imports included), the outputs' writing excluded
    timing = {"wall": seconds + (age or 0.0), "cpu": _cpu_seconds(), "load_average": load, "jobs": args.jobs,
              "cores": os.cpu_count()}
    paths = write_outputs(args.out, results, settings, seconds, timing)
    for r in results:
        if r["status"] != "scored":
            print(f"excluded: {r['model']} seed {r['seed']}: {r['reason']}")
    print(f"suite: {len(results)} model seeds in {seconds:.1f} s -> {', '.join(str(p) for p in paths)}")
    return 0


def add_suite_parser(sub) -> None:
    """The ``suite`` subcommand of ``toylab``."""
    p = sub.add_parser("suite", help="score every method against the planted truths, over seeds")
    p.add_argument("--quick", action="store_true", help="seed 0, resampling only, short sweeps (the tests' run)")
    p.add_argument("--jobs", type=int, default=1, help="processes, one (model, seed) each (default 1)")
    p.add_argument("--out", default="suite-out", help="where suite.md, suite.json, suite.png go (default suite-out)")
    p.add_argument("--models", nargs="+", default=None, help="suite models (default: all)")
    p.add_argument("--methods", nargs="+", default=None, help="discovery methods and 'probe' (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 with --quick, else 0 1 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_suite)
