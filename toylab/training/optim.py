"""torch's Adam, AdamW and LBFGS, without the compiler import on first use.

``torch.optim.Adam.step`` (and AdamW's, which it inherits) is wrapped so that
``torch.compile`` can trace it: the wrapper imports ``torch._dynamo``, which
takes 4-5 s of CPU the first time in every process. The lab never compiles an
optimiser, yet every notebook, test worker and ``toylab train`` paid that once.

:class:`Adam` and :class:`AdamW` are torch's classes with one method replaced:
``step`` runs the same body (``_init_group``, then the functional ``adam``
update with the group's settings) under ``torch.no_grad()``, without the
wrapper. Same arguments, same state, same kernels: the parameters they produce
are bit-identical to torch's (tested in ``tests/test_optim.py``). Only
``differentiable=False`` (torch's default) is supported, since differentiating
through the update is what the wrapper's grad-mode switch is for. The four
``Optimizer`` methods torch marks "not for the compiler" (``add_param_group``,
``zero_grad``, ``state_dict``, ``load_state_dict``; the mark imports
``torch._dynamo`` on first use) are called undecorated, through ``__wrapped__``.
:class:`LBFGS` (the probes' optimiser) needs only that: its ``step`` is torch's own,
but its constructor calls ``add_param_group``.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam


def _undecorated(name: str):
    """``torch.optim.Optimizer.<name>`` without its ``torch._disable_dynamo`` wrapper."""
    method = getattr(torch.optim.Optimizer, name)
    return getattr(method, "__wrapped__", method)


class _NoCompilerImport:
    """Mixin: the ``Optimizer`` methods torch wraps for the compiler, called undecorated."""

    def add_param_group(self, param_group):
        return _undecorated("add_param_group")(self, param_group)

    def zero_grad(self, set_to_none: bool = True):
        return _undecorated("zero_grad")(self, set_to_none)

    def state_dict(self):
        return _undecorated("state_dict")(self)

    def load_state_dict(self, state_dict):
        return _undecorated("load_state_dict")(self, state_dict)


class _StepWithoutCompilerImport(_NoCompilerImport):
    """Mixin: ``step`` of :class:`torch.optim.Adam`, minus the ``torch._dynamo`` wrapper."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if any(group["differentiable"] for group in self.param_groups):
            raise ValueError(f"toylab.training.optim.{type(self).__name__} does not support differentiable=True; "
                             f"use torch.optim.{type(self).__name__}")

    @torch.no_grad()
    def step(self, closure=None):
        """One optimisation step (``closure``: re-evaluates the model and returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps = [], [], [], [], [], []
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                           state_steps)
            beta1, beta2 = group["betas"]
            adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                 amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1, beta2=beta2,
                 lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                 maximize=group["maximize"], foreach=group["foreach"], capturable=group["capturable"],
                 differentiable=False, fused=group["fused"], grad_scale=getattr(self, "grad_scale", None),
                 found_inf=getattr(self, "found_inf", None),
                 decoupled_weight_decay=group["decoupled_weight_decay"])
        return loss


class Adam(_StepWithoutCompilerImport, torch.optim.Adam):
    """:class:`torch.optim.Adam` (same arguments) whose ``step`` does not import ``torch._dynamo``."""


class AdamW(_StepWithoutCompilerImport, torch.optim.AdamW):
    """:class:`torch.optim.AdamW` (same arguments) whose ``step`` does not import ``torch._dynamo``."""


class LBFGS(_NoCompilerImport, torch.optim.LBFGS):
    """:class:`torch.optim.LBFGS` (same arguments, same ``step``) whose constructor does not
    import ``torch._dynamo``."""
