"""Hook points, hooked forward passes and the activation cache.

Every intermediate activation of a toylab model passes through a
:class:`HookPoint`, an identity module with a name such as
``blocks.1.attn.hook_pattern`` (the names TransformerLens uses, so what a
student learns here carries over). A *hook* is a function
``fn(activation, hook) -> None | replacement``: it may read the activation,
or return a tensor of the same shape that replaces it downstream.

Two ways to use hooks, both on any :class:`HookedRootModule`:

- ``logits = model.run_with_hooks(tokens, fwd_hooks=[(name_or_filter, fn)])``
- ``logits, cache = model.run_with_cache(tokens, names_filter=...)``

Hooks are removed when the call returns, *also* when a hook raises.

This module is the bottom layer of toylab: it imports nothing from toylab.
The TransformerLens-style residual helpers of the cache
(``cache.decompose_resid()``, ``cache.stack_head_results()``,
``cache.logit_attrs(...)``) are added by :mod:`toylab.causal.attribution` when it is
imported (it registers them with :func:`register_cache_method`); without that
import they raise an ``AttributeError`` that says so.

Indices follow one rule across toylab (:func:`resolve_index`, Python's):
a negative layer or head counts from the end (``-1`` = the last), anything
outside ``[-n, n)`` and anything that is not an integer is refused.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[str, Iterable[str], Callable[[str], bool], None]


def resolve_index(index, n: int, what: str = "layer") -> int:
    """``index`` as an int in ``[0, n)`` by Python's rule: ``-1`` is the last, ``-n`` the first.

    Accepts anything with ``__index__`` (ints, integer tensor/numpy scalars), not bools, floats or
    strings; else ``ValueError`` with the valid range. Every layer and head index goes through it.
    """
    if isinstance(index, bool) or isinstance(index, (str, bytes, float)):
        raise ValueError(f"{what} must be an integer, got {type(index).__name__} {index!r}")
    try:
        i = operator.index(index)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {type(index).__name__} {index!r}") from None
    if n <= 0:
        raise ValueError(f"{what} {i} is out of range: there are no {what}s (n = {n})")
    if not -n <= i < n:
        raise ValueError(f"{what} {i} is out of range: valid {what}s are 0..{n - 1} "
                         f"(or -{n}..-1, counting from the end)")
    return i % n


def _accepts_two_args(fn) -> bool | None:
    """Whether ``fn(activation, hook)`` binds; None when the signature cannot be read."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        return sig.bind(None, None) is not None
    except TypeError:
        return False


MAX_REENTRY = 4  # a hook may run the model (guarded) a few runs deep; deeper is a hook re-triggering itself


def _hook_label(fn) -> str:
    return repr(getattr(fn, "__name__", fn))


class HookPoint(nn.Module):
    """An identity module that runs the hooks attached to it.

    ``forward(x)`` calls each hook ``fn(x, self)`` in the order they were
    added; a hook that returns a tensor replaces ``x`` for the hooks after it
    and for the rest of the model. The replacement must have the same shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = "<unnamed hook point>"
        self._fwd_hooks: list[HookFn] = []
        self._running = 0  # hooks of this point running now: > 0 when a hook re-enters the model

    @property
    def has_hooks(self) -> bool:
        return bool(self._fwd_hooks)

    def add_hook(self, fn: HookFn) -> None:
        if not callable(fn):
            raise TypeError(f"a hook must be callable as fn(activation, hook), got {type(fn).__name__}")
        if _accepts_two_args(fn) is False:
            raise TypeError(
                f"hook {_hook_label(fn)} cannot be called as fn(activation, hook): a hook takes two "
                "arguments, the activation tensor and the HookPoint (write `def fn(act, hook):`)"
            )
        self._fwd_hooks.append(fn)

    def remove_hooks(self) -> None:
        self._fwd_hooks.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self._fwd_hooks:
            where = f"hook {_hook_label(fn)} on {self.name}"
            if self._running >= MAX_REENTRY:
                raise ValueError(f"{where} runs the model again from inside itself ({self._running} runs deep): "
                                 "every run reaches this hook again, without end. Compute what the hook needs "
                                 "before the run (e.g. with run_with_cache) and let the hook only read it")
            self._running += 1
            try:
                out = fn(x, self)
            finally:
                self._running -= 1
            if out is None:
                continue
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"{where} returned {type(out).__name__}; a hook returns None or a replacement tensor")
            if out.shape != x.shape:
                raise ValueError(f"{where} returned shape {list(out.shape)}, expected the activation's shape "
                                 f"{list(x.shape)}")
            if out.dtype != x.dtype:
                raise TypeError(f"{where} returned dtype {out.dtype}, expected the activation's dtype {x.dtype} "
                                f"(convert with .to({x.dtype}))")
            if out.device != x.device:
                raise ValueError(f"{where} returned a tensor on {out.device}, expected the activation's device "
                                 f"{x.device}")
            x = out
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


# Short activation names -> (full name template, needs a layer index).
_SHORT_NAMES: dict[str, tuple[str, bool]] = {
    "embed": ("hook_embed", False),
    "pos_embed": ("hook_pos_embed", False),
    "resid_pre": ("blocks.{l}.hook_resid_pre", True),
    "resid_post": ("blocks.{l}.hook_resid_post", True),
    "attn_out": ("blocks.{l}.hook_attn_out", True),
    "q": ("blocks.{l}.attn.hook_q", True),
    "k": ("blocks.{l}.attn.hook_k", True),
    "v": ("blocks.{l}.attn.hook_v", True),
    "z": ("blocks.{l}.attn.hook_z", True),
    "result": ("blocks.{l}.attn.hook_result", True),
    "q_input": ("blocks.{l}.attn.hook_q_input", True),
    "k_input": ("blocks.{l}.attn.hook_k_input", True),
    "v_input": ("blocks.{l}.attn.hook_v_input", True),
    "attn_scores": ("blocks.{l}.attn.hook_attn_scores", True), "scores": ("blocks.{l}.attn.hook_attn_scores", True),
    "pattern": ("blocks.{l}.attn.hook_pattern", True), "attn": ("blocks.{l}.attn.hook_pattern", True),
    "normalized": ("blocks.{l}.ln1.hook_normalized", True), "mlp_in": ("blocks.{l}.hook_mlp_in", True),
    "resid_mid": ("blocks.{l}.hook_resid_mid", True), "mlp_out": ("blocks.{l}.hook_mlp_out", True),
    "pre": ("blocks.{l}.mlp.hook_pre", True), "post": ("blocks.{l}.mlp.hook_post", True),
}


def act_name(name: str, layer: int | None = None) -> str:
    """Full hook name from a short one: ``act_name("pattern", 1)`` is
    ``"blocks.1.attn.hook_pattern"``; ``act_name("embed")`` is ``"hook_embed"``.
    A name that already looks full (contains ``hook_``) is returned unchanged.
    """
    if "hook_" in name:
        if layer is not None:
            raise ValueError(f"{name!r} is already a full hook name; do not also pass layer={layer}")
        return name
    if name not in _SHORT_NAMES:
        raise KeyError(f"unknown activation name {name!r}; short names are {sorted(_SHORT_NAMES)}")
    template, needs_layer = _SHORT_NAMES[name]
    if layer is not None:
        if isinstance(layer, (bool, str, bytes, float)) or not hasattr(layer, "__index__"):
            raise KeyError(f"layer must be an integer, got {type(layer).__name__} {layer!r}")
        layer = operator.index(layer)
        if layer < 0:
            raise KeyError(f"act_name({name!r}, {layer}) has no model to count from the end: give a layer >= 0 "
                           "(cache[name, -1] and the analysis functions do accept negative layers)")
    if needs_layer and layer is None:
        raise KeyError(f"activation {name!r} lives in every layer: give a layer, e.g. ({name!r}, 0)")
    if not needs_layer and layer is not None:
        raise KeyError(f"activation {name!r} has no layer; got layer {layer}")
    return template.format(l=layer)


class ActivationCache(Mapping):
    """Activations recorded by :meth:`HookedRootModule.run_with_cache`.

    A read-only mapping from full hook names to tensors, that also takes
    short keys: ``cache["pattern", 1]`` is ``cache["blocks.1.attn.hook_pattern"]``
    (shape ``[batch, n_heads, query_pos, key_pos]``), ``cache["embed"]`` is
    ``cache["hook_embed"]``. Tensors are detached unless the cache was made
    with ``detach=False``.
    """

    def __init__(self, activations: dict[str, torch.Tensor], model: "HookedRootModule | None" = None):
        self._acts = dict(activations)
        self.model = model

    def _n_layers(self) -> int | None:
        if self.model is not None:
            return self.model.cfg.n_layers
        layers = [int(m.group(1)) for m in map(re.compile(r"^blocks\.(\d+)\.").match, self._acts) if m]
        return max(layers) + 1 if layers else None

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise KeyError(f"cache keys are a name or (name, layer), got {key!r}")
            name, layer = key
            if not isinstance(name, str):
                raise KeyError(f"the name in a (name, layer) cache key must be a string, got {name!r}")
            if layer is not None:
                n = self._n_layers()
                try:
                    if n is None:  # no model and no per-layer activations: only the type can be checked
                        if isinstance(layer, (bool, str, bytes, float)) or operator.index(layer) < 0:
                            raise ValueError(f"layer must be a non-negative integer here (no model to count "
                                             f"from the end), got {layer!r}")
                        layer = operator.index(layer)
                    else:
                        layer = resolve_index(layer, n, "layer")
                except (ValueError, TypeError) as e:
                    raise KeyError(f"bad cache key {key!r}: {e}") from None
            return act_name(name, layer)
        if isinstance(key, str):
            if key in _SHORT_NAMES:
                return act_name(key)  # raises "give a layer" for per-layer names
            return key
        raise KeyError(f"cache keys are a name or (name, layer), got {key!r}")

    def __getitem__(self, key) -> torch.Tensor:
        full = self._key(key)
        if full not in self._acts:
            raise KeyError(
                f"{full!r} is not in this cache; it holds {sorted(self._acts)}"
                " (was it excluded by names_filter?)"
            )
        return self._acts[full]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self._acts
        except KeyError:
            return False

    def __getattr__(self, attr: str):
        # only reached for attributes the class does not have
        if attr in _CACHE_HELPERS_FROM:
            raise AttributeError(
                f"ActivationCache.{attr} is added by {_CACHE_HELPERS_FROM[attr]}: `import "
                f"{_CACHE_HELPERS_FROM[attr]}` first (the hook machinery does not import it, "
                "to keep the dependency one-way)"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {', '.join(list(self._acts)[:4])}{', ...' if len(self) > 4 else ''})"


# helper name -> the module that registers it on ActivationCache
_CACHE_HELPERS_FROM: dict[str, str] = dict.fromkeys(
    ("decompose_resid", "stack_head_results", "logit_attrs"), "toylab.causal.attribution")


def register_cache_method(name: str, fn: Callable) -> None:
    """Add ``fn(cache, *args, **kwargs)`` to :class:`ActivationCache` as method ``name``.

    Higher layers (e.g. :mod:`toylab.causal.attribution`) use this to offer the
    TransformerLens-style helpers on the cache without this module importing them.
    """
    if not callable(fn):
        raise TypeError(f"register_cache_method needs a callable, got {type(fn).__name__}")
    setattr(ActivationCache, name, fn)


class HookedRootModule(nn.Module):
    """Base class of a model whose activations pass through named hook points.

    Subclasses build their modules, then call :meth:`setup_hooks` once; it
    names every :class:`HookPoint` by its module path.
    """

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @property
    def hook_names(self) -> list[str]:
        """Every hook point's name, in forward order."""
        return list(self.hook_dict)

    def _names_matching(self, name_filter: NameFilter) -> list[str]:
        """Resolve a name, list of names, predicate or None (all) to hook names."""
        if name_filter is None:
            return self.hook_names
        if callable(name_filter):
            return [n for n in self.hook_dict if name_filter(n)]
        names = [name_filter] if isinstance(name_filter, str) else list(name_filter)
        unknown = [n for n in names if n not in self.hook_dict]
        if unknown:
            raise KeyError(
                f"unknown hook name(s) {unknown}; valid names are:\n  " + "\n  ".join(self.hook_names)
            )
        return names

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for hp in self.hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = ()):
        """Context manager: attach ``fwd_hooks`` for the duration of the block.

        Each entry is ``(name_or_filter, fn)``, where the first element is a
        full hook name, a list of them, or a predicate ``name -> bool``.
        The hooks are removed on exit, whether or not the block raised;
        hooks that were attached before are left alone.
        """
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            for entry in fwd_hooks:
                if not (isinstance(entry, tuple) and len(entry) == 2):
                    raise TypeError(f"fwd_hooks entries are (name_or_filter, fn) pairs, got {entry!r}")
                name_filter, fn = entry
                for name in self._names_matching(name_filter):
                    hp = self.hook_dict[name]
                    hp.add_hook(fn)
                    added.append((hp, fn))
            yield self
        finally:
            for hp, fn in added:
                # remove this exact registration (the same fn may be on it twice)
                for i in range(len(hp._fwd_hooks) - 1, -1, -1):
                    if hp._fwd_hooks[i] is fn:
                        del hp._fwd_hooks[i]
                        break

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
        """Run the model with temporary hooks; returns what ``forward`` returns."""
        with self.hooks(fwd_hooks):
            return self(tokens, **kwargs)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names_filter: NameFilter = None,
        detach: bool = True,
        **kwargs,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Run the model and record activations.

        Args:
            tokens: ``[batch, pos]`` token ids.
            names_filter: which hook points to record: a full name, a list
                of names, a predicate ``name -> bool``, or None for all.
            detach: detach the recorded tensors from the autograd graph.

        Returns:
            ``(output, cache)`` where ``output`` is what ``forward`` returns
            and ``cache`` an :class:`ActivationCache`.
        """
        store: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name] = act.detach() if detach else act

        names = self._names_matching(names_filter)
        with self.hooks([(names, save)] if names else []):
            out = self(tokens, **kwargs)
        # order the cache as the forward pass ran
        return out, ActivationCache({n: store[n] for n in self.hook_dict if n in store}, self)


def names_regex(pattern: str) -> Callable[[str], bool]:
    """A names filter matching hook names with ``re.search(pattern, name)``."""
    rx = re.compile(pattern)
    return lambda name: rx.search(name) is not None
