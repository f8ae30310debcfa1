"""Record the grokking numbers over seeds, for the chapter "Grokking".

Writes ``chapters/data/ch12_grokking.json`` (the chapter reads and prints it): one
:func:`seed_report` for each of seeds 0, 1 and 2 of the ``grokking-1l`` recipe. Seed 0 is
the shipped checkpoint, read as it is; seeds 1 and 2 are trained here with the preset's
settings (the same data split, another initialisation; a few minutes each on one thread).
The record also holds the preset's model, data and training specs, the toylab and torch
versions and the git commit, so a reader can tell which code made it.

Each report: the step training accuracy reached 0.99 (``memorised_step``), the step
fresh-test accuracy reached 0.99 (``grokked_step``) and their difference; the step the
excluded loss first reached twice its value at ``memorised_step`` (``circuit_step``) against
the step fresh-test accuracy reached 0.5 (``half_step``); the final key frequencies, their
share of the embedding's energy, the Gini of its spectrum; the fraction of the answer
logits' variance the key ``cos(w_k (a + b - c))`` terms explain; the neurons clustered on a
key frequency; and fresh-test accuracy with the key frequencies removed from the embedding
against as many other frequencies removed.

    python benchmarks/record_grokking.py            # seeds 0, 1, 2 (seed 0 without training)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "data" / "ch12_grokking.json"
PRESET = "grokking-1l"
GROKKED, HALF, CLUSTER = 0.99, 0.5, 0.5


@torch.no_grad()
def fresh_accuracy(model, data, W_E=None) -> float:
    """Fresh-test accuracy of ``model``, optionally with its embedding replaced by ``W_E``."""
    from toylab.training.full_batch import answer_logits

    if W_E is not None:
        model = copy.deepcopy(model)
        model.W_E.copy_(W_E.to(model.W_E.dtype))
    logits = answer_logits(model, data.tokens[data.fresh_test_idx], data.p)
    return float((logits.argmax(-1) == data.answers[data.fresh_test_idx]).double().mean())


def other_frequencies(keys: list[int], p: int) -> list[int]:
    """As many non-key frequencies as ``keys``, spread evenly over the others (no randomness)."""
    rest = [k for k in range(1, (p - 1) // 2 + 1) if k not in keys]
    step = len(rest) / len(keys)
    return [rest[int(i * step)] for i in range(len(keys))]


@torch.no_grad()
def seed_report(model, data, history: list[dict], seed: int) -> dict:
    """The numbers the chapter prints for one trained ``grokking-1l`` model and its history."""
    from toylab.neurons.fourier import (cluster_neurons, embedding_spectrum, gini, key_frequencies,
                                        logit_fit, neuron_frequencies, remove_frequencies, top_share)
    from toylab.training.full_batch import answer_logits, first_step

    p = data.p
    model.eval()
    W_E = model.W_E.detach()
    spec = embedding_spectrum(W_E, p)
    keys = key_frequencies(spec)
    logits = answer_logits(model, data.tokens, p)
    explained, _ = logit_fit(logits, p, keys)
    _, cache = model.run_with_cache(data.tokens, names_filter="blocks.0.mlp.hook_post")
    best, frac = neuron_frequencies(cache["blocks.0.mlp.hook_post"][:, -1], p)
    clusters = cluster_neurons(best, frac, CLUSTER)
    memorised = first_step(history, "train_acc", GROKKED)
    grokked = first_step(history, "fresh_acc", GROKKED)
    at_mem = next(e for e in history if e["step"] == memorised)["excluded_loss"] if memorised else None
    circuit = first_step(history, "excluded_loss", 2 * at_mem, after=memorised) if at_mem else None
    others = other_frequencies(keys, p) if keys else []
    return {
        "seed": seed, "memorised_step": memorised, "grokked_step": grokked,
        "delay": grokked - memorised if grokked is not None and memorised is not None else None,
        "circuit_step": circuit, "half_step": first_step(history, "fresh_acc", HALF),
        "key_frequencies": keys, "n_keys": len(keys),
        "key_share": top_share(spec, len(keys)) if keys else 0.0,
        "embed_gini": gini(spec[1:]), "explained": explained,
        "explained_per_key": {str(k): logit_fit(logits, p, [k])[0] for k in keys},
        "neurons_per_key": {str(k): len(clusters.get(k, [])) for k in keys},
        "neurons_on_keys": sum(len(clusters.get(k, [])) for k in keys) / int(best.numel()),
        "fresh_acc": fresh_accuracy(model, data),
        "fresh_acc_keys_removed": fresh_accuracy(model, data, remove_frequencies(W_E, p, keys)) if keys else None,
        "other_frequencies": others,
        "fresh_acc_others_removed": fresh_accuracy(model, data, remove_frequencies(W_E, p, others))
        if keys else None,
    }


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import toylab
    from toylab.data import make_dataset
    from toylab.files import atomic_write
    from toylab.training.presets import get_preset, load_shipped
    from toylab.training.train import train

    preset = get_preset(PRESET)
    data = make_dataset(preset.data)
    rec = {"script": "benchmarks/record_grokking.py", "preset": PRESET,
           "preset_spec": {"model": preset.model.to_dict(), "data": preset.data,
                           "train": preset.train.to_dict()},
           "toylab": getattr(toylab, "__version__", None), "commit": _commit(), "torch": torch.__version__,
           "python": platform.python_version(), "threads": 1, "reports": []}
    t0 = time.perf_counter()
    for seed in args.seeds:
        t = time.perf_counter()
        if seed == 0:
            ckpt = load_shipped(PRESET)
            model, history = ckpt.model, ckpt.history
        else:
            result = train(preset.model, preset.data, preset.train, seed=seed, progress=False)
            model, history = result.model, result.history
        rec["reports"].append(seed_report(model, data, history, seed))
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", rec["reports"][-1], flush=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write(args.out, lambda p: Path(p).write_text(json.dumps(rec, indent=1) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
