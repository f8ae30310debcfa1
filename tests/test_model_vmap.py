"""The forward pass runs under ``torch.vmap`` over models stacked by seed (issue 23, "Seeds, fast"),
keeps its checks there, and gives each slice exactly what that model alone gives."""

import pytest
import torch
from torch.func import functional_call, stack_module_state

from toylab.blocks import plain
from toylab.model import AttnOnlyTransformer, ModelConfig

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # SDPA under vmap

CONFIGS = {
    "attn-only": dict(d_vocab=13, n_ctx=10, d_model=16, n_layers=2, n_heads=2, positional="shortformer"),
    "mlp-ln": dict(d_vocab=13, n_ctx=10, d_model=16, n_layers=2, n_heads=2, d_mlp=8, layernorm=True,
                   ln_affine=True, biases=True, positional="learned"),
}


def stacked(kind, n=3):
    models = [AttnOnlyTransformer(ModelConfig(**CONFIGS[kind]), seed=s) for s in range(n)]
    params, buffers = stack_module_state(models)
    return models, params, buffers


def vmapped(base, params, buffers, tokens, return_type):
    f = lambda p, b, t: functional_call(base, (p, b), (t,), {"return_type": return_type})  # noqa: E731
    return torch.vmap(f)(params, buffers, tokens)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("return_type", ["logits", "loss", "loss_per_token"])
def test_vmap_over_seeds_equals_each_model(kind, fast, return_type):
    models, params, buffers = stacked(kind)
    tokens = torch.randint(0, 13, (3, 4, 10), generator=torch.Generator().manual_seed(0))
    models[0].fast_path = fast
    out = vmapped(models[0], params, buffers, tokens, return_type)
    for i, m in enumerate(models):
        m.fast_path = fast
        assert torch.equal(out[i], m(tokens[i], return_type=return_type))  # the same kernels: bit-identical


def test_vmap_keeps_the_token_range_check():
    models, params, buffers = stacked("attn-only")
    tokens = torch.zeros(3, 2, 10, dtype=torch.long)
    tokens[1, 0, 4] = 13  # out of range in one slice only
    with pytest.raises(ValueError, match="token id 13 is out of range"):
        vmapped(models[0], params, buffers, tokens, "logits")


def test_vmap_warns_and_falls_back_on_a_non_finite_slice():
    models, params, buffers = stacked("attn-only")
    params = {k: v.clone() for k, v in params.items()}
    params["W_E"][2, 5] = float("nan")  # seed 2's embedding of token 5
    tokens = torch.randint(0, 13, (3, 2, 10), generator=torch.Generator().manual_seed(1))
    tokens[2, :, 6] = 5
    with pytest.warns(RuntimeWarning, match="non-finite values in W_E"):
        out = vmapped(models[0], params, buffers, tokens, "logits")
    for i in (0, 1):  # the finite seeds: their own answer (through the reference path, so to rounding)
        torch.testing.assert_close(out[i], models[i](tokens[i]), rtol=1e-5, atol=1e-5)
    # seed 2: positions before the NaN are kept out of it exactly, as in the model alone
    assert torch.isfinite(out[2][:, :6]).all() and not torch.isfinite(out[2][:, 6:]).any()


def test_plain_is_the_identity_on_ordinary_tensors():
    t = torch.arange(4.0)
    assert plain(t) is t
    seen = []
    torch.vmap(lambda x: seen.append(plain(x).shape) or x)(torch.zeros(3, 2))
    assert seen == [torch.Size([3, 2])]
