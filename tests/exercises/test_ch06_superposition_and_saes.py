"""Graded tests of chapter 6, "Superposition and dictionary learning".

Ground truth: the library's independent implementations in ``toylab.features``
(the toy model, the analytic phase diagram, the ReLU SAE and its decoder-gradient
projection, MMCS) and the shipped ``induction-2l`` model itself (its activations
and its layer-0 attention, from which the true number of features per position is
counted, not written down).
"""

import pytest
import torch

from toylab.course.answers import expect_number, expect_tensor, load_answers

CH = "ch06_superposition_and_saes"


def answers():
    return load_answers(CH)


@pytest.mark.exercise("tms_reconstruct")
@pytest.mark.points(1)
def test_tms_reconstruct():
    from toylab.features.tms import ToyModel
    m = ToyModel(5, 2, n_instances=1, feature_probability=0.3, seed=4)
    with torch.no_grad():
        m.b.normal_(generator=torch.Generator().manual_seed(0))
    x = m.generate_batch(9, torch.Generator().manual_seed(1))
    W, b = m.W[0].detach(), m.b[0].detach()
    want = m(x)[:, 0].detach()
    got = answers().tms_reconstruct(W, b, x[:, 0])
    expect_tensor(got, want, "x'", "batch, n_features",
                  hints=[(x[:, 0] @ W.T @ W + b, "you forgot the ReLU"),
                         (torch.relu(x[:, 0] @ W.T @ W), "you forgot the bias b")])


@pytest.mark.exercise("dimensions_per_feature")
@pytest.mark.points(1)
def test_dimensions_per_feature():
    from toylab.features.tms import dimensions_per_feature
    g = torch.Generator().manual_seed(2)
    for W in (torch.eye(2), torch.tensor([[1.0, -1.0]]), torch.randn(3, 7, generator=g)):
        want = float(dimensions_per_feature(W[None])[0])
        expect_number(answers().dimensions_per_feature(W), want, f"dimensions per feature of a {list(W.shape)} W",
                      tol=1e-5, hint="m is W.shape[0] (hidden dimensions); divide by the squared Frobenius norm")


# well inside each region of the analytic phase diagram (the argmin is computed below)
REGIME_POINTS = [(0.2, 0.9), (0.3, 0.5), (4.0, 0.9), (5.0, 0.6), (1.0, 0.02), (0.5, 0.01), (3.0, 0.02)]


@pytest.mark.exercise("superposition_regime")
@pytest.mark.points(2)
def test_superposition_regime():
    from toylab.features.tms import REGIMES, phase_diagram
    for r, p in REGIME_POINTS:
        d = phase_diagram([r], [p])
        want = REGIMES[int(d["regime"][0, 0])]
        losses = {name: round(float(d["losses"][k, 0, 0]), 5) for k, name in enumerate(REGIMES)}
        got = answers().superposition_regime(r, p)
        assert got == want, (f"at relative importance {r} and density {p} you chose {got!r}, but the expected "
                             f"losses are {losses}: the lowest is {want!r}")


@pytest.mark.exercise("sae_forward")
@pytest.mark.points(1)
def test_sae_forward():
    from toylab.features.sae import ReluSAE
    sae = ReluSAE(6, 10, seed=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(6, generator=g))
        sae.b_enc.copy_(torch.randn(10, generator=g))
        # a decoder that is not the encoder's transpose (a fresh SAE starts with W_dec = W_enc.T)
        W_dec = sae.W_dec + 0.5 * torch.randn(sae.W_dec.shape, generator=g)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
    x = torch.randn(8, 6, generator=g)
    params = [p.detach().clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    out = answers().sae_forward(x, *params)
    assert isinstance(out, tuple) and len(out) == 2, "return the pair (f, x_hat)"
    f, x_hat = out
    with torch.no_grad():
        want_f = sae.encode(x)
        no_bpre = torch.relu(x @ params[0] + params[1])
        no_relu = (x - params[3]) @ params[0] + params[1]
    expect_tensor(f, want_f, "f", "batch, d_sae", hints=[(no_bpre, "subtract b_dec from x before encoding"),
                                                        (no_relu, "apply the ReLU: feature activations are >= 0")])
    expect_tensor(x_hat, sae(x).detach(), "x_hat", "batch, d_in",
                  hints=[(want_f @ params[2], "add b_dec back after decoding"),
                         (want_f @ params[0].T + params[3], "you decoded with W_enc transposed; decode with W_dec "
                          "(here it is not the encoder's transpose)")])


@pytest.mark.exercise("remove_parallel_grad")
@pytest.mark.points(2)
def test_remove_parallel_grad():
    from toylab.features.sae import ReluSAE
    sae = ReluSAE(6, 10, seed=5)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(5))
    with torch.enable_grad():
        sae.loss(x)[0].backward()
    grad = sae.W_dec.grad.clone()
    W = sae.W_dec.detach().clone()
    got = answers().remove_parallel_grad(grad, W)
    assert torch.equal(grad, sae.W_dec.grad), "you modified grad in place: return a new tensor"
    sae.project_decoder_grad()
    expect_tensor(got, sae.W_dec.grad, "projected gradient", "d_sae, d_in",
                  hints=[((grad * W).sum(1, keepdim=True) * W, "that is the parallel part; subtract it from grad"),
                         (grad - (grad * W).sum(0, keepdim=True) * W, "the dot product is per row: sum over dim 1")])


@pytest.mark.exercise("mmcs")
@pytest.mark.points(1)
def test_mmcs():
    from toylab.features import metrics
    g = torch.Generator().manual_seed(6)
    true = torch.randn(12, 8, generator=g)
    learned = torch.cat([2.0 * true[:6] + 0.3 * torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g)])
    want = metrics.mmcs(learned, true)
    other_way = float(metrics.cosine_matrix(learned, true).max(1).values.mean())
    got = answers().mmcs(learned, true)
    if isinstance(got, (int, float)) and abs(got - other_way) < 1e-5:
        raise AssertionError(f"your MMCS {got:.4f} takes, for each *learned* direction, its best true match; "
                             f"MMCS asks for each *true* feature's best learned match (max over dim 0)")
    expect_number(got, want, "MMCS", tol=1e-5, hint="normalise both sets of rows before the dot products")


@pytest.mark.exercise("token_dictionary_hook")
@pytest.mark.points(1)
def test_token_dictionary_hook(induction_model):
    from toylab.data import InductionData
    hook = answers().token_dictionary_hook()
    assert isinstance(hook, str), f"return a hook name (str), got {type(hook).__name__}"
    assert hook in induction_model.hook_dict, f"{hook!r} is not a hook of induction-2l"
    tokens = InductionData(d_vocab=128, n_ctx=32).sample(4, torch.Generator().manual_seed(0))
    _, cache = induction_model.run_with_cache(tokens, names_filter=hook)
    act = cache[hook]
    want = induction_model.W_E.detach()[tokens]
    if act.shape != want.shape or not torch.allclose(act, want, atol=1e-6):
        raise AssertionError(f"at {hook!r} the activation is not W_E[token]"
                             + (": a head has already written to the stream there" if "resid" in hook
                                or "attn_out" in hook else ""))


@pytest.mark.hidden
@pytest.mark.exercise("choose_k_after_layer_0")
@pytest.mark.points(2)
def test_choose_k_after_layer_0(induction_model):
    from toylab.data import repeated_tokens
    from toylab.circuits.scores import head_detector_scores
    k = answers().choose_k_after_layer_0()
    assert isinstance(k, int) and not isinstance(k, bool), f"return an integer k, got {k!r}"
    tokens = repeated_tokens(128, 15, 32, torch.Generator().manual_seed(0))
    prev = head_detector_scores(induction_model, tokens)["previous_token"][0]
    want = 1 + int((prev > 0.4).sum())  # the token itself + one feature per previous-token head
    if k < want:
        raise AssertionError(f"k = {k} is too small: each position holds its own token and what "
                             f"{want - 1} previous-token head(s) wrote, {want} features; a smaller k must merge them")
    if k > want:
        raise AssertionError(f"k = {k} is too large: only {want} known features are active per position; "
                             "extra latents split them into pieces (sparse but wrong)")
