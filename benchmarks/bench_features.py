"""Sparse-autoencoder training speed, against a reference measured in the same run.

Trains the ReLU + L1 SAE of chapter 6 on about 100k activations of the shipped
``induction-2l`` at ``blocks.0.hook_resid_pre`` (where the residual stream is
exactly ``W_E[token]``) and prints:

1. the SAE's wall time, next to one forward + backward pass of the model over
   the same tokens (the reference), and their ratio;
2. how well it recovered the 127 known token directions (MCC, MMCS);
3. the same SAE on a random-init control model: its match to the trained
   model's ``W_E`` and to its own.

    python benchmarks/bench_features.py [--threads N] [--steps N]
"""

from __future__ import annotations

import argparse
import time

import torch

from toylab.data import InductionData
from toylab.features.ground_truth import random_init_control, true_features
from toylab.features.metrics import mcc, mmcs
from toylab.features.sae import ReluSAE
from toylab.features.train_sae import gather_activations, train_sae
from toylab.training.presets import load_model

HOOK = "blocks.0.hook_resid_pre"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sequences", type=int, default=3226, help="3226 x 31 positions ~ 100k activations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model("induction-2l")
    tokens = InductionData(d_vocab=model.cfg.d_vocab, n_ctx=model.cfg.n_ctx).sample(
        args.sequences, torch.Generator().manual_seed(1))
    acts = gather_activations(model, HOOK, tokens)
    truth = true_features(model, "hook_embed")["token"][1:]  # BOS never appears mid-sequence

    t0 = time.perf_counter()
    for i in range(0, len(tokens), 128):
        model(tokens[i:i + 128], return_type="loss").backward()
    t_ref = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)

    sae = ReluSAE(model.cfg.d_model, 4 * model.cfg.d_model, l1_coefficient=3.0, seed=0)
    t0 = time.perf_counter()
    train_sae(sae, acts, steps=args.steps, batch_size=1024, progress=False, resample_every=100)
    t_sae = time.perf_counter() - t0
    print(f"threads={args.threads}  activations={acts.shape[0]}  d_in={acts.shape[1]}  steps={args.steps}")
    print(f"SAE training                    {t_sae:7.2f} s")
    print(f"model fwd+bwd over same tokens  {t_ref:7.2f} s   (reference)")
    print(f"ratio SAE / reference           {t_sae / t_ref:7.1f}")
    print(f"MCC vs token directions         {mcc(sae.directions(), truth):7.4f}")
    print(f"MMCS vs token directions        {mmcs(sae.directions(), truth):7.4f}")

    control = random_init_control(model)
    sae_c = ReluSAE(model.cfg.d_model, 4 * model.cfg.d_model, l1_coefficient=3.0, seed=0)
    train_sae(sae_c, gather_activations(control, HOOK, tokens), steps=args.steps, batch_size=1024,
              progress=False, resample_every=100)
    print(f"random-init control: MCC vs trained W_E {mcc(sae_c.directions(), truth):.4f}, "
          f"vs its own W_E {mcc(sae_c.directions(), control.W_E.detach()[1:]):.4f}")


if __name__ == "__main__":
    main()
