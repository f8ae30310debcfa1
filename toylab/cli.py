"""The ``toylab`` command.

    toylab train PRESET [--seed N] [--steps N] [--out PATH] [--threads N] [--quiet]
    toylab train --all [--out-dir DIR] [--jobs N|auto]
    toylab info CHECKPOINT_OR_PRESET
    toylab models            # the shipped models and what they learned
    toylab analyze CHECKPOINT_OR_PRESET                               # head report and composition scores
    toylab grade [--chapter N] [--json [FILE]] [--timeout S] [PATH]   # grade exercises
    toylab grade-class SUBMISSIONS [--jobs N] [--out DIR]             # a class into gradebook.csv/json
    toylab release OUT                                                # the students' copy of the course
    toylab suite [--quick] [--jobs N] [--out DIR] [--models ...] [--seeds ...]  # methods vs planted truth
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import signal
import sys
from pathlib import Path

from toylab.files import check_writable
from toylab.training.checkpoint import CheckpointError, check_metadata, load_checkpoint, save_checkpoint
from toylab.course.commands import add_course_parsers
from toylab.suite.runner import add_suite_parser
from toylab.training.presets import PRESETS, get_preset, shipped_path
from toylab.training.train import TrainingInterrupted, TrainResult, train


def _fmt_heads(rows: list[list[float]]) -> str:
    return " | ".join(" ".join(f"{x:.2f}" for x in row) for row in rows) or "-"


# languages where repeats (and so the induction probe) mean something
PROBED_KINDS = ("induction", "text", "text_repeats")


def _num(metrics: dict, key: str, fmt: str = ".3f") -> str:
    """``metrics[key]`` formatted, or ``-`` where the record lacks it (older or partial checkpoints)."""
    v = metrics.get(key)
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def summary_lines(metrics: dict, data_kind: str) -> list[str]:
    """Human-readable lines for an evaluation entry (see :func:`toylab.training.train.evaluate`).

    Fields the entry lacks print as ``-`` (never a ``KeyError``)."""
    if not isinstance(metrics, dict) or not metrics:
        return ["  (no evaluation recorded)"]
    lines = []
    if metrics.get("partial"):
        lines.append(f"  PARTIAL: training was interrupted at step {metrics.get('step')} "
                     f"of {metrics.get('steps_planned', '?')}")
    lines.append(f"  validation loss        {_num(metrics, 'val_loss')} nats (train {_num(metrics, 'train_loss')})")
    if "fresh_acc" in metrics:  # a full-batch task (modular addition): accuracy on each split
        lines.append(f"  accuracy               train {_num(metrics, 'train_acc', '.4f')}, test "
                     f"{_num(metrics, 'test_acc', '.4f')}, fresh test {_num(metrics, 'fresh_acc', '.4f')}")
    if metrics.get("kl_to_truth") is not None:
        lines.append(f"  KL(truth || model)     {_num(metrics, 'kl_to_truth', '.4f')} nats per token, on held-out samples")
    if data_kind not in PROBED_KINDS or not metrics.get("induction"):
        return lines
    return lines + [
        f"  [BOS, r, r] loss       first copy {_num(metrics, 'loss_first')}, repeated copy "
        f"{_num(metrics, 'loss_repeat')} (at another offset {_num(metrics, 'loss_repeat_gap')})",
        f"  induction score        {_fmt_heads(metrics['induction'])}   (layers separated by |)",
        f"  previous-token score   {_fmt_heads(metrics.get('prev_token') or [])}",
    ]


def _metadata(name: str, result: TrainResult) -> dict:
    """What ``NAME.json`` records; ``file`` and ``sha256`` (of the exact bytes written)
    are added by :func:`toylab.training.checkpoint.save_checkpoint`."""
    cfg = result.model.cfg
    return {
        "preset": name,
        "description": get_preset(name).description if name in PRESETS else "",
        "n_params": sum(p.numel() for p in result.model.parameters()),
        "config": cfg.to_dict(),
        "data_spec": result.data_spec,
        "train_spec": result.train_cfg.to_dict(),
        "seed": result.seed,
        "train_seconds": round(result.seconds, 1),
        "final_metrics": result.metrics,
    }


def check_out_path(out: Path) -> Path:
    """Refuse, before any training, an output path that would lose data or fail at the end:
    a ``.json`` path (the metadata would overwrite the checkpoint), a folder, an
    unwritable place. Raises ``ValueError``/:class:`SaveError` with a sentence."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        raise ValueError(f"--out {out}: a checkpoint path must not end in .json (toylab writes the checkpoint's "
                         f"metadata to NAME.json beside it); use e.g. {out.with_suffix('.pt')}")
    if out.name in ("", ".", ".."):
        raise ValueError(f"--out {out}: give a file path such as runs/model.pt")
    check_writable(out)
    check_writable(out.with_suffix(".json"))
    return out


def save_result(name: str, result: TrainResult, out: Path) -> Path:
    """Write the checkpoint and its ``.json`` metadata as a consistent pair."""
    return save_checkpoint(
        out, result.model, data_spec=result.data_spec, train_spec=result.train_cfg.to_dict(), seed=result.seed,
        history=result.history, metrics=result.metrics, prefix_state=result.prefix_state,
        metadata=_metadata(name, result),
    )


def partial_path(out: Path) -> Path:
    """Where an interrupted run of ``out`` is saved: ``NAME.partial.pt`` (never over ``out``)."""
    return out.with_name(f"{out.stem}.partial{out.suffix or '.pt'}")


def train_preset(name: str, out: Path, seed: int | None, steps: int | None, threads: int | None,
                 quiet: bool) -> TrainResult:
    preset = get_preset(name)
    tcfg = preset.train
    if steps is not None:
        tcfg = dataclasses.replace(tcfg, steps=steps)
    if threads is not None:
        tcfg = dataclasses.replace(tcfg, threads=threads)
    seed = preset.seed if seed is None else seed
    out = check_out_path(out)
    try:
        result = train(preset.model, preset.data, tcfg, seed=seed, progress=not quiet, desc=name)
    except TrainingInterrupted as e:
        partial = partial_path(out)
        save_result(name, e.result, partial)
        m = e.result.metrics
        print(f"\n{name}: interrupted at step {m.get('step')} of {tcfg.steps}; saved what was trained so far, "
              f"marked partial, to {partial} ({out} is untouched)", file=sys.stderr)
        raise
    save_result(name, result, out)
    print(f"{name}: trained {tcfg.steps} steps in {result.seconds:.1f}s (seed {seed}) -> {out}")
    for line in summary_lines(result.metrics, result.data_spec["kind"]):
        print(line)
    return result


def cmd_train(args) -> int:
    if args.all == bool(args.preset):
        raise SystemExit("toylab train: give one PRESET or --all")
    if not args.all and args.jobs is not None:
        raise ValueError(f"--jobs {args.jobs} applies only with --all (presets trained side by side); one preset "
                         f"trains in one process: drop --jobs (--threads N gives it more CPU threads)")
    if not args.all and args.out_dir is not None:
        raise ValueError(f"--out-dir {args.out_dir} applies only with --all; for one preset give --out PATH")
    if args.all and args.out:
        raise ValueError(f"--out {args.out} names one checkpoint; with --all give --out-dir DIR (each preset "
                         f"is written to DIR/PRESET.pt)")
    names = list(PRESETS) if args.all else [args.preset]
    for name in names:
        get_preset(name)  # fail early on an unknown name
    outs = []
    for name in names:
        if args.all:
            out = Path(args.out_dir or "runs") / f"{name}.pt"
        else:
            out = Path(args.out) if args.out else Path("runs") / f"{name}-seed{args.seed or 0}.pt"
        outs.append(check_out_path(out))  # every target checked before minutes of training
    jobs = min(_n_jobs(args.jobs or "1"), len(names))
    if jobs > 1:
        return _train_in_parallel(names, outs, args, jobs)
    for name, out in zip(names, outs):
        try:
            train_preset(name, out, args.seed, args.steps, args.threads, args.quiet)
        except TrainingInterrupted:
            return 130
    return 0


def _n_jobs(value: str) -> int:
    """``--jobs``: a positive number of processes, or ``auto`` (one per CPU core)."""
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--jobs {value}: give a positive number of processes, or auto (one per core)")
    return n


def _train_cost(name: str) -> int:
    """A rough size of preset ``name``'s training run (steps x tokens x width x depth), to start the longest first."""
    from toylab.training.full_batch import FULL_BATCH_KINDS
    p = get_preset(name)
    if p.data["kind"] in FULL_BATCH_KINDS:  # every training pair [a, b, =] at every step
        tokens = round(p.data["train_frac"] * p.data["p"] ** 2) * 3
    else:
        tokens = p.train.batch_size * p.data["n_ctx"]
    return p.train.steps * tokens * p.model.d_model * (p.model.n_layers + 1)


_STOP = None  # in a worker of _train_in_parallel: the event set on Ctrl-C


def _init_worker(stop) -> None:
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an idle worker outlives Ctrl-C; a run is interrupted


def _train_worker(name: str, out: Path, seed: int | None, steps: int | None, threads: int | None) -> tuple[str, str]:
    """One preset in its own process (``toylab train --all --jobs N``): its summary
    lines are returned, so runs that finish together do not interleave them."""
    if _STOP is not None and _STOP.is_set():
        return "skipped", ""
    text = io.StringIO()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.redirect_stdout(text):
            train_preset(name, out, seed, steps, threads, quiet=True)
    except TrainingInterrupted:
        return "interrupted", text.getvalue()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return "done", text.getvalue()


def _train_in_parallel(names: list[str], outs: list[Path], args, jobs: int) -> int:
    """Train the presets ``jobs`` at a time, each in its own process with its own thread
    count (the preset's, 1, unless ``--threads``): each run computes what it would alone,
    so the checkpoints are the ones a sequential run writes. Ctrl-C stops every run; each
    saves what it had trained as ``NAME.partial.pt``, as one run does, and no other starts."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    todo = sorted(zip(names, outs), key=lambda job: -_train_cost(job[0]))  # the longest first
    print(f"training {len(todo)} presets, {jobs} at a time (one process each)", flush=True)
    # spawn, not fork: a forked child of a process whose torch has started threads can hang
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    status, error = "done", None
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(stop,)) as pool:
        running: set = set()
        try:
            while todo or running:
                # a run is handed out only when a worker is free, so none waits in a queue when Ctrl-C comes
                while todo and len(running) < jobs:
                    name, out = todo.pop(0)
                    running.add(pool.submit(_train_worker, name, out, args.seed, args.steps, args.threads))
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        result, text = future.result()
                    except Exception as e:  # as one at a time: no preset starts after a failed one
                        error = error or e
                        todo.clear()
                        continue
                    print(text, end="", flush=True)
                    if result == "interrupted":  # a worker can see Ctrl-C before this process does
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            status = "interrupted"
            stop.set()  # the runs still going save their partial checkpoints; none starts after them
    if error is not None and status != "interrupted":
        raise error  # after the runs that were going have finished and saved their checkpoints
    return 130 if status == "interrupted" else 0


def _resolve_checkpoint(arg: str) -> Path:
    """A preset's shipped checkpoint, or the file ``arg``; a name that is neither (a preset typo such as
    ``induction-2L``) is refused with the presets listed."""
    if arg in PRESETS:
        return shipped_path(arg)
    path = Path(arg)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        get_preset(arg)  # raises: unknown preset, did you mean ..., the presets are ...
    return path


def cmd_info(args) -> int:
    ckpt = load_checkpoint(_resolve_checkpoint(args.checkpoint))
    problem = check_metadata(ckpt.path)
    cfg = ckpt.config
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    print(f"{ckpt.path}")
    print(f"  model    {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_head {cfg.d_head}, "
          f"d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}, positions {cfg.positional}, "
          f"layernorm {'on' if cfg.layernorm else 'off'}; {n_params:,} parameters")
    print(f"  data     {json.dumps({k: v for k, v in ckpt.data_spec.items() if k != 'alphabet'}, default=str)}")
    t = ckpt.train_spec
    from toylab.training.full_batch import FULL_BATCH_KINDS
    batch = "full" if ckpt.data_spec.get("kind") in FULL_BATCH_KINDS else t.get("batch_size")
    print(f"  training {t.get('steps')} steps, batch {batch}, lr {t.get('lr')}, seed {ckpt.seed}, "
          f"{t.get('threads')} thread(s); toylab {ckpt.toylab_version}, torch {ckpt.torch_version}")
    for line in summary_lines(ckpt.metrics, ckpt.data_spec.get("kind", "?")):
        print(line)
    from toylab.causal.evaluation import off_probe_lines  # the off-probe evaluations (issue 8)
    for line in off_probe_lines(ckpt.metrics):
        print(line)
    if problem:
        print(f"toylab info: warning: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_analyze(args) -> int:
    from toylab.circuits.composition import analytic_baseline, composition_scores
    from toylab.model import head_name
    from toylab.circuits.report import head_report

    ckpt = load_checkpoint(_resolve_checkpoint(args.checkpoint))
    model = ckpt.model
    if model.cfg.n_layers == 0:
        print("a zero-layer model has no heads: its logits are W_E W_U, a bigram table")
        return 0
    print(head_report(ckpt))  # the checkpoint: its data's n_ctx keeps the probe on trained positions
    if model.cfg.layernorm:
        print("composition scores: not shown, they read the weights as linear maps and this model has LayerNorm")
        return 0
    base = analytic_baseline(model.cfg.d_model)
    for layer_b in range(1, model.cfg.n_layers):
        for kind in ("Q", "K", "V"):
            scores = composition_scores(model, kind, layer_a=layer_b - 1, layer_b=layer_b)
            rows = "  ".join(
                f"{head_name(layer_b - 1, a)}->{head_name(layer_b, b)} {scores[a, b]:.3f} ({scores[a, b] / base:.1f}x)"
                for a in range(scores.shape[0]) for b in range(scores.shape[1])
            )
            print(f"{kind}-composition (baseline 1/sqrt(d_model) = {base:.3f}): {rows}")
    return 0


def cmd_models(args) -> int:
    print(f"{'preset':16s} {'layers':>6s} {'heads':>5s} {'val loss':>8s} {'KL truth':>8s} {'rep loss':>8s} "
          f"{'induction':>9s} {'prev-tok':>8s}  description")
    for name, preset in PRESETS.items():
        path = shipped_path(name)
        if not path.is_file():
            print(f"{name:16s} (not trained: run `toylab train {name}`)")
            continue
        m = load_checkpoint(path).metrics
        kl = f"{_num(m, 'kl_to_truth', '.4f'):>8s}"
        if preset.data["kind"] in PROBED_KINDS:
            probe = (f"{_num(m, 'loss_repeat'):>8s} {_num(m, 'best_induction', '.2f'):>9s} "
                     f"{_num(m, 'best_prev_token', '.2f'):>8s}")
        else:
            probe = f"{'-':>8s} {'-':>9s} {'-':>8s}"
        print(f"{name:16s} {preset.model.n_layers:6d} {preset.model.n_heads:5d} {_num(m, 'val_loss'):>8s} {kl} "
              f"{probe}  {preset.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toylab", description="toylab: train and dissect attention-only transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a preset model")
    p.add_argument("preset", nargs="?", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--all", action="store_true", help="train every preset into --out-dir")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the preset's, 1)")
    p.add_argument("--out", help="checkpoint path (default runs/PRESET-seedN.pt)")
    p.add_argument("--out-dir", default=None, help="with --all: where to write the checkpoints (default runs)")
    p.add_argument("--jobs", default=None,
                   help="with --all: presets trained at a time, each in its own process without a progress bar "
                        "(a number, or auto: one per core; default 1); the checkpoints are the same as one at a time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("info", help="describe a checkpoint (a path or a preset name)")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("analyze", help="head report and composition scores of a checkpoint or preset")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("models", help="the shipped models and their final metrics")
    p.set_defaults(func=cmd_models)
    add_course_parsers(sub)
    add_suite_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, CheckpointError) as e:
        print(f"toylab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
