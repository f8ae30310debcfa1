"""Running the suite: each (model, seed) trained or loaded, its truth checked, every method scored.

**Models.** Seed 0 of a preset with a shipped checkpoint is that checkpoint; any other seed is
trained with the preset's recipe (no off-probe evaluations, one evaluation at the end) and cached in
``$TOYLAB_CACHE`` (default ``~/.cache/toylab``) under ``suite/PRESET-sSEED-KEY.pt``, where ``KEY``
hashes the preset and the source of ``toylab/model.py``, ``blocks.py``, ``training/`` and ``data/``
(so a code change retrains); the file is written atomically, never inside the repository.

**Jobs.** One (model, seed) is one job, run in its own process (``spawn``, one torch thread), ``jobs``
at a time: one seed per process was the fastest way to train seeds here
(``benchmarks/bench_seeds.py``).

**Exclusion.** A circuit seed whose truth cannot be read (:class:`~toylab.suite.entries.NoPlantedCircuit`)
or fails the intervention check under resampling (``kept >= 0.9``, ``removed >= 0.8``,
:func:`~toylab.suite.truth.check_truth`) is reported with the reason and left out of every mean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch

from toylab.suite.truth import SOURCES

QUICK = {"seeds": (0,), "sources": ("resample",), "n_sweep": 4, "sp_steps": 20, "n_task": 32, "sae_steps": 300,
         "methods": ("patching", "eap", "eap-ig", "atp", "atp*", "acdc", "sp")}
FULL = {"seeds": (0, 1, 2), "sources": SOURCES, "n_sweep": 20, "sp_steps": 30, "n_task": 64, "sae_steps": 1500,
        "methods": ("patching", "eap", "eap-ig", "atp", "atp*", "acdc", "sp")}


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


def load_or_train(preset_name: str, seed: int):
    """The model of ``preset_name`` at ``seed``: the shipped checkpoint, the cache, or trained now (module doc)."""
    from toylab.training.checkpoint import load_checkpoint, save_checkpoint
    from toylab.training.presets import get_preset, load_shipped, shipped_path
    from toylab.training.train import train

    p = get_preset(preset_name)
    if seed == p.seed and shipped_path(preset_name).is_file():
        return load_shipped(preset_name).model
    path = cache_dir() / f"{preset_name}-s{seed}-{_code_key(p)}.pt"
    if path.is_file():
        return load_checkpoint(path).model
    once = dataclasses.replace(p.train, eval_every=p.train.steps)
    result = train(p.model, p.data, once, seed=seed, progress=False, off_probe=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, result.model, data_spec=p.data, train_spec=dataclasses.asdict(once), seed=seed)
    return result.model


def run_job(name: str, seed: int, settings: dict) -> dict:
    """One (model, seed): ``{"model", "seed", "status": "scored" | "excluded", "reason", "truth", "scores"}``."""
    torch.set_num_threads(1)
    from toylab.discovery.graph import Graph
    from toylab.suite.entries import FEATURES, NoPlantedCircuit, registry
    from toylab.suite.scores import PROBE_SITES, circuit_scores, probe_scores, sae_scores
    from toylab.suite.truth import check_truth, truth_holds

    circuits = registry()
    entry = circuits.get(name) or FEATURES[name]
    model = load_or_train(entry.preset, seed)
    out = {"model": name, "seed": seed, "status": "scored", "reason": "", "truth": {}, "scores": {}}
    if name in circuits:
        graph = Graph(model)
        try:
            truth = entry.truth(model, graph)
        except NoPlantedCircuit as err:
            return {**out, "status": "excluded", "reason": str(err)}
        task = entry.make_task(model, seed, settings["n_task"])
        r = check_truth(model, graph, graph.circuit(truth), task, "resample")
        kept, removed = r.kept, r.removed
        out["truth"] = {"edges": sorted(truth), "kept": kept, "removed": removed}
        if not truth_holds(kept, removed):
            return {**out, "status": "excluded", "reason": f"the truth keeps {kept:.2f} and removes {removed:.2f} "
                    "of the behaviour (needs >= 0.90 and >= 0.80)"}
        out["scores"] = circuit_scores(model, entry, seed, settings["methods"], settings["sources"],
                                       n_task=settings["n_task"], n_sweep=settings["n_sweep"],
                                       sp_steps=settings["sp_steps"])
        if name in PROBE_SITES and "probe" in settings.get("features", ("probe",)):
            out["scores"].update(probe_scores(model, name, seed))
    else:
        out["scores"] = sae_scores(model, entry, seed, steps=settings["sae_steps"])
    return out


def run_suite(models: list[str], settings: dict, jobs: int = 1, progress: bool = True) -> list[dict]:
    """Every (model, seed) of ``models`` at ``settings`` (:data:`QUICK` or :data:`FULL`), ``jobs`` processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from toylab.training.progress import Progress

    todo = [(m, s) for m in models for s in settings["seeds"]]
    results = []
    with Progress(len(todo), "suite", enabled=progress) as bar:
        if jobs <= 1:
            for m, s in todo:
                results.append(run_job(m, s, settings))
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                futures = [pool.submit(run_job, m, s, settings) for m, s in todo]
                for f in as_completed(futures):
                    results.append(f.result())
                    bar.update(1)
    order = {k: i for i, k in enumerate(todo)}
    return sorted(results, key=lambda r: order[r["model"], r["seed"]])


def cmd_suite(args) -> int:
    """``toylab suite [--quick] [--jobs N] [--out DIR] [--models ...] [--methods ...]``."""
    import time

    from toylab.suite.entries import FEATURES, registry
    from toylab.suite.report import write_outputs

    known = list(registry()) + list(FEATURES)
    models = args.models or known
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ValueError(f"unknown suite model(s) {unknown}; the suite's models are {known}")
    settings = dict(QUICK if args.quick else FULL)
    if args.methods:
        from toylab.suite.scores import METHODS
        bad = [m for m in args.methods if m not in METHODS + ("probe",)]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; the methods are {list(METHODS) + ['probe']}")
        settings["methods"] = tuple(m for m in args.methods if m in METHODS)
        settings["features"] = tuple(m for m in args.methods if m == "probe")
    if isinstance(args.jobs, int) and args.jobs < 1:
        raise ValueError(f"--jobs must be a positive number of processes, got {args.jobs}")
    t0 = time.perf_counter()
    results = run_suite(models, settings, jobs=args.jobs, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    paths = write_outputs(args.out, results, settings, seconds)
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_suite)
