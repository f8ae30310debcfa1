"""toylab.training.optim: torch's Adam/AdamW without the torch._dynamo import, bit for bit."""

import copy
import subprocess
import sys

import pytest
import torch

from toylab.training import optim


def _run(cls, steps=5, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = cls([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-2, **kw)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (step + 1) / steps
        x = torch.randn(32, 8, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("kw", [{}, {"fused": True}, {"foreach": False}, {"amsgrad": True}, {"maximize": True}])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_same_bits_as_torch(name, kw):
    ours, opt = _run(getattr(optim, name), **kw)
    theirs, ref = _run(getattr(torch.optim, name), **kw)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert isinstance(opt, getattr(torch.optim, name))
    assert opt.state_dict()["state"].keys() == ref.state_dict()["state"].keys()


def test_closure_returns_the_loss():
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.Adam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = p.pow(2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 2.0
    assert torch.all(p < 1)


def test_differentiable_is_refused_with_a_pointer_to_torch():
    with pytest.raises(ValueError, match="torch.optim.Adam"):
        optim.Adam([torch.nn.Parameter(torch.ones(1))], differentiable=True)


def test_training_and_probes_do_not_import_the_compiler():
    code = ("import dataclasses, sys, torch\n"
            "from toylab.training.presets import PRESETS\n"
            "from toylab.training.train import train\n"
            "from toylab.features.train_sae import train_sae\n"
            "from toylab.features.topk import TopKSAE\n"
            "from toylab.features import tms\n"
            "p = PRESETS['induction-2l']\n"
            "cfg = dataclasses.replace(p.train, steps=3, eval_every=3, warmup_steps=1)\n"
            "train(p.model, p.data, cfg, progress=False, off_probe=False)\n"
            "train_sae(TopKSAE(8, 16, k=2), torch.randn(64, 8), steps=3, batch_size=16, progress=False)\n"
            "from toylab.features.probes import fit_probe\n"
            "fit_probe(torch.randn(40, 4), torch.arange(40) % 2, groups=torch.arange(40) // 4)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_a_saved_state_resumes_like_torch():
    def steps(opt, params, n):
        for i in range(n):
            for p in params:
                p.grad = torch.full_like(p, 0.5 - i)
            opt.step()

    start = [torch.nn.Parameter(torch.arange(4.0)), torch.nn.Parameter(torch.ones(2, 3))]
    params = [torch.nn.Parameter(p.detach().clone()) for p in start]
    opt = optim.AdamW(params, lr=1e-2)
    steps(opt, params, 3)
    saved = opt.state_dict()
    resumed = {}
    for cls in (optim.AdamW, torch.optim.AdamW):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        o = cls(ps, lr=1e-2)
        o.load_state_dict(copy.deepcopy(saved))  # a loaded state shares tensors with `saved`
        steps(o, ps, 2)
        resumed[cls] = ps
    for a, b in zip(*resumed.values()):
        assert torch.equal(a, b)


def test_lbfgs_is_torchs_bit_for_bit():
    """The probes' optimiser: torch's LBFGS step (strong Wolfe line search) on a logistic fit."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g), (torch.rand(50, generator=g) > 0.5).float()
    fitted = []
    for cls in (optim.LBFGS, torch.optim.LBFGS):
        w = torch.zeros(3, requires_grad=True)
        opt = cls([w], lr=1.0, max_iter=20, history_size=5, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 1e-2 * w.pow(2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        fitted.append(w.detach())
    assert torch.equal(*fitted)
    assert fitted[0].abs().sum() > 0  # it moved
