"""Full-batch training (modular addition): the loss at the `=` position, the recorded curves,
the progress measures, weight decay on every parameter; the other kinds are untouched."""

import dataclasses

import pytest
import torch

from toylab.data import make_dataset
from toylab.model import AttnOnlyTransformer, ModelConfig
from toylab.neurons.fourier import embedding_spectrum, excluded_loss, gini, key_frequencies, restricted_loss
from toylab.training.full_batch import (add_progress_measures, answer_loss, evaluate_full_batch, first_step,
                                       is_full_batch)
from toylab.training.train import TrainConfig, is_decayed, make_optimizer, train

P = 11
CFG = ModelConfig(d_vocab=P + 1, n_ctx=3, d_model=16, n_layers=1, n_heads=2, d_mlp=32)
DATA = {"kind": "modular_addition", "p": P, "train_frac": 0.5, "seed": 0}
TCFG = TrainConfig(steps=12, batch_size=1, lr=3e-3, warmup_steps=0, final_lr_frac=1.0, weight_decay=1.0,
                   grad_clip=0.0, eval_every=4, prefix_steps=4, decay_all=True)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_modular_addition_is_the_full_batch_kind_and_the_languages_are_not():
    assert is_full_batch(make_dataset(DATA))
    assert not is_full_batch(make_dataset({"kind": "induction", "d_vocab": 16, "n_ctx": 12, "seed": 0,
                                           "min_offset": 2, "max_offset": 5, "p_repeat": 1.0, "p_periodic": 0.5}))


def test_full_batch_training_is_seeded_and_bit_identical():
    a = train(CFG, DATA, TCFG, seed=3, progress=False)
    b = train(CFG, DATA, TCFG, seed=3, progress=False)
    c = train(CFG, DATA, TCFG, seed=4, progress=False)
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    assert not states_equal(a.model.state_dict(), c.model.state_dict())
    prefix = train(CFG, DATA, TCFG, seed=3, progress=False, stop_after=TCFG.prefix_steps)
    assert states_equal(a.prefix_state, prefix.model.state_dict())


def test_one_step_is_adamw_on_the_answer_loss_of_every_training_pair():
    """Step 1 by hand: the loss at the `=` position over the p answer logits, all training pairs,
    decay on every parameter (W_E and W_U too), constant lr."""
    data = make_dataset(DATA)
    got = train(CFG, DATA, dataclasses.replace(TCFG, steps=1, eval_every=1), seed=5, progress=False).model
    model = AttnOnlyTransformer(CFG, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=TCFG.lr, betas=TCFG.betas, weight_decay=TCFG.weight_decay)
    tokens, answers = data.split("train")
    loss = torch.nn.functional.cross_entropy(model(tokens)[:, -1, :P], answers)
    loss.backward()
    opt.step()
    for name, w in model.state_dict().items():
        assert torch.allclose(got.state_dict()[name], w, atol=1e-6), f"{name}: not the hand-made step"
    # one decay for every parameter: the embedding and unembedding are decayed too
    assert all(g["weight_decay"] == TCFG.weight_decay
               for g in make_optimizer(list(model.named_parameters()), TCFG).param_groups if g["params"])


def test_decay_all_is_off_by_default_and_left_out_of_the_saved_config():
    assert "decay_all" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert TCFG.to_dict()["decay_all"] is True and TrainConfig.from_dict(TCFG.to_dict()) == TCFG
    model = AttnOnlyTransformer(CFG, seed=0)
    groups = make_optimizer(list(model.named_parameters()), TrainConfig(weight_decay=0.5)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in groups[0]["params"])
    assert decayed == sorted(n for n, _ in model.named_parameters() if is_decayed(n)) and "W_E" not in decayed
    with pytest.raises(ValueError, match="decay_all must be True or False"):
        TrainConfig(decay_all=1)


def test_history_records_train_test_and_fresh_curves_and_they_are_what_the_weights_give():
    result = train(CFG, DATA, TCFG, seed=0, progress=False)
    assert [e["step"] for e in result.history] == [4, 8, 12]
    data = make_dataset(DATA)
    last = result.history[-1]
    again = evaluate_full_batch(result.model, data, 12)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "fresh_loss", "fresh_acc", "val_loss"):
        assert last[key] == pytest.approx(again[key], abs=1e-6), key
    with torch.no_grad():
        logits = result.model(data.tokens)[:, -1, :P]
        acc = (logits.argmax(-1) == data.answers).double()
        loss = answer_loss(result.model, *data.split("train"), P).item()
    assert last["train_acc"] == pytest.approx(acc[data.train_idx].mean().item())
    assert last["fresh_acc"] == pytest.approx(acc[data.fresh_test_idx].mean().item())
    assert last["train_loss"] == pytest.approx(loss, abs=1e-6)
    assert last["val_loss"] == last["test_loss"]


def test_progress_measures_use_the_final_key_frequencies_at_every_step():
    """A model whose final embedding is planted at frequency 3: the measures of an earlier state
    (a random one) are computed with the key frequency of the final state."""
    import math

    data = make_dataset(DATA)
    model = AttnOnlyTransformer(CFG, seed=0)
    early = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.arange(P + 1, dtype=torch.float32)
    with torch.no_grad():
        model.W_E[:, 0] = torch.cos(2 * math.pi * 3 * x / P)
        model.W_E[:, 1] = torch.sin(2 * math.pi * 3 * x / P)
        model.W_E[:, 2:] *= 0.01
    final = {k: v.clone() for k, v in model.state_dict().items()}
    history = [{"step": 1}, {"step": 2}]
    keys = add_progress_measures(model, data, history, [early, final])
    assert keys == [3] and history[-1]["key_frequencies"] == [3] and "key_frequencies" not in history[0]
    assert states_equal(model.state_dict(), final), "the model must end with its final weights"
    for entry, state in zip(history, [early, final]):
        m = AttnOnlyTransformer(CFG, seed=None)
        m.load_state_dict(state)
        with torch.no_grad():
            logits = m(data.tokens)[:, -1, :P]
        assert entry["embed_gini"] == pytest.approx(gini(embedding_spectrum(state["W_E"], P)[1:]))
        assert entry["restricted_loss"] == pytest.approx(restricted_loss(logits, P, [3]), abs=1e-6)
        assert entry["excluded_loss"] == pytest.approx(excluded_loss(logits, P, [3], data.train_idx), abs=1e-6)
    assert history[1]["embed_gini"] > history[0]["embed_gini"] + 0.3, "the planted embedding is sparse"
    with pytest.raises(ValueError, match="one state per history entry"):
        add_progress_measures(model, data, history, [final])


def test_a_trained_run_records_the_progress_measures_in_every_entry():
    result = train(CFG, DATA, TCFG, seed=0, progress=False)
    keys = key_frequencies(embedding_spectrum(result.model.W_E.detach(), P))
    assert result.history[-1]["key_frequencies"] == keys
    assert all({"restricted_loss", "excluded_loss", "embed_gini"} <= set(e) for e in result.history)


def test_a_full_batch_run_saves_and_loads(tmp_path):
    from toylab.training.checkpoint import load_checkpoint

    result = train(CFG, DATA, TCFG, seed=0, progress=False)
    ckpt = load_checkpoint(result.save(tmp_path / "m.pt"))
    assert ckpt.history == result.history and ckpt.train_spec["decay_all"] is True
    assert states_equal(ckpt.model.state_dict(), result.model.state_dict())


def test_first_step_counts_equality_honours_after_and_skips_missing_measures():
    h = [{"step": 20, "acc": 0.5, "x": None}, {"step": 40, "acc": 0.99, "x": 3.0},
         {"step": 60, "acc": 1.0, "x": 1.0}, {"step": 80, "acc": 0.2, "x": 5.0}]
    assert first_step(h, "acc", 0.99) == 40          # equality counts
    assert first_step(h, "acc", 0.995) == 60
    assert first_step(h, "acc", 0.99, after=41) == 60
    assert first_step(h, "acc", 1.5) is None
    assert first_step(h, "x", 0.0) == 40             # None never counts
    with pytest.raises(ValueError, match="'step' and 'nope'"):
        first_step(h, "nope", 0.5)
    with pytest.raises(ValueError, match="list of dicts"):
        first_step({"step": 1}, "acc", 0.5)
    with pytest.raises(ValueError, match="threshold"):
        first_step(h, "acc", float("nan"))
