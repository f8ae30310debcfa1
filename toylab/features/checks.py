"""Argument checks shared by the features modules, each raising one clear sentence.

Every public function of ``toylab.features`` checks what it is given with these
before any tensor work, so that a careless call gets a ``ValueError`` or ``TypeError``
naming the argument, what was expected and what came, never a traceback from deep
inside torch (DESIGN.md, "Bad input"). Non-finite values are refused where they enter
(:func:`check_finite`: one ``torch.isfinite(x).all()`` per call, the counts only
computed once something is wrong).
"""

from __future__ import annotations

import math
import numbers

import torch

from toylab.hooks import HookedRootModule


def describe(value) -> str:
    """A short description of ``value`` for a message: ``2.5 (float)``, ``'a' (str)``."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def as_int(value):
    """``int(value)`` for an integer that is not a Python ``int`` (``numpy.int64``, a 0-dim integer
    tensor); anything else (a bool, a float, a str) is returned unchanged for the caller to refuse."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.dtype.is_floating_point \
            and not value.dtype.is_complex and value.dtype != torch.bool:
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None,
              meaning: str = "") -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[minimum, maximum]``."""
    value = as_int(value)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok:
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum == 1 and maximum is None:
            want = "a positive integer"
        elif maximum is None:
            want = "an integer" + ("" if minimum is None else f" >= {minimum}")
        else:
            want = f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {want}, got {describe(value)}" + (f": {meaning}" if meaning else ""))
    return value


def check_seed(seed, name: str = "seed") -> int:
    """A seed is any integer (not a bool, not a float: ``int(1.5)`` would hide a typo)."""
    return check_int(name, seed, meaning="it seeds a private torch.Generator")


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, meaning: str = "") -> float:
    """``float(value)`` if it is a finite real number (not a bool, not a tensor) in
    ``[minimum, maximum]`` (``positive``: also ``> 0``)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (minimum is None or value >= minimum) \
            and (maximum is None or value <= maximum) and (not positive or value > 0)
    if not ok:
        parts = []
        if minimum is not None and not (positive and minimum == 0):
            parts.append(f">= {minimum}")
        if maximum is not None:
            parts.append(f"<= {maximum}")
        want = ("a finite positive number" if positive else "a finite number") \
            + (" " + " and ".join(parts) if parts else "")
        raise ValueError(f"{name} must be {want}, got {describe(value)}" + (f": {meaning}" if meaning else ""))
    return value


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (a string such as ``"no"`` is truthy, so it is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return value


def check_generator(generator, name: str = "generator") -> torch.Generator:
    """``generator`` if it is a ``torch.Generator`` (the lab never draws from the global one)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    return generator


def check_finite(x: torch.Tensor, what: str,
                 why: str = "refusing to compute with them (where did they come from?)") -> torch.Tensor:
    """``x`` if every value is finite, else a ``ValueError`` saying how many are NaN and inf.

    Cheap: a finite sum means every value is finite (a NaN or an infinity makes the sum NaN
    or infinite), and ``x.sum()`` costs a fraction of ``torch.isfinite(x).all()`` on the CPU;
    only a non-finite sum (a bad value, or finite values whose sum overflows) is looked at
    element by element."""
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return x
    if bool(torch.isfinite(x.sum())):
        return x
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what}: {n_bad} of its {x.numel()} values are non-finite ({n_nan} NaN, "
                         f"{n_bad - n_nan} inf); {why}")
    return x


def check_tensor(x, what: str, *, ndim: int | None = None, shape: str = "", floating: bool = True,
                 device: torch.device | None = None, finite: bool = True) -> torch.Tensor:
    """A tensor of rank ``ndim`` (``shape`` describes it in messages), floating (or integer when
    ``floating=False``), on ``device`` (never on the meta device), non-empty and finite."""
    described = f" of shape {shape}" if shape else ""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor{described}, got {type(x).__name__}")
    if floating and not x.dtype.is_floating_point:
        raise TypeError(f"{what} must be a floating-point tensor{described}, got dtype {x.dtype}")
    if not floating and (x.dtype.is_floating_point or x.dtype.is_complex):
        raise TypeError(f"{what} must be an integer tensor{described}, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{what} must have shape {shape or f'with {ndim} dims'}, got {list(x.shape)}")
    check_device(x, what, device)
    if x.numel() == 0:
        raise ValueError(f"{what} is empty (shape {list(x.shape)})")
    return check_finite(x, what) if finite else x


def check_device(x: torch.Tensor, what: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` if it holds data (not the meta device) on ``device`` (when given)."""
    if x.device.type == "meta":
        raise ValueError(f"{what} is on the meta device (a shape without data): "
                         "there are no values to compute with")
    if device is not None and device.type == "meta":
        raise ValueError(f"the weights to apply to {what} are on the meta device (shapes without values): "
                         "initialise or load them on a real device first")
    if device is not None and x.device != device:
        raise ValueError(f"{what} is on {x.device} but the weights are on {device}: move it with "
                         f".to({str(device)!r})")
    return x


def check_model(model, who: str):
    """``model`` if it is a toylab model with hook points (``AttnOnlyTransformer``)."""
    if not isinstance(model, HookedRootModule) or not hasattr(model, "cfg"):
        raise TypeError(f"{who} needs a toylab model (e.g. toylab.model.AttnOnlyTransformer), "
                        f"got {type(model).__name__}")
    return model


class UnknownHookError(KeyError):
    """A hook name the model does not have (a ``KeyError``, like a missing cache key, whose
    message prints as written: ``KeyError``'s own ``str`` would show the quoted repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_hook_name(model, hook) -> str:
    """``hook`` if it is the name of one of ``model``'s hook points; the error lists them all."""
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name (str), got {type(hook).__name__}")
    if hook not in model.hook_dict:
        raise UnknownHookError(f"unknown hook {hook!r}; this model's hooks are:\n  " + "\n  ".join(model.hook_names))
    return hook
