import warnings

import numpy as np
import pytest
import torch
from torch import nn

from scdm.ensemble import (
    EnsembleTrainer,
    TrainConfig,
    epoch_orders,
    flush_subnormals,
    init_model,
)
from scdm.masks import MaskSampler


def data(n=90, d=6, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) if n_classes == 2 else rng.integers(0, n_classes, n)
    return X, y


def train_alone(X, y, mask, config, n_classes, model_index, random_state=0):
    """One model the plain PyTorch way, from the same init and data order as the ensemble."""
    sizes = [X.shape[1], *config.hidden, 1 if n_classes == 2 else n_classes]
    layers = []
    for (w, b), is_last in zip(init_model(sizes, random_state, model_index),
                               [False] * len(config.hidden) + [True], strict=True):
        lin = nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin] if is_last else [lin, nn.ReLU()]
    net = nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas, eps=config.eps)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for order in epoch_orders(np.flatnonzero(mask), random_state, model_index, config.epochs):
        for start in range(0, order.size, config.batch_size):
            idx = torch.from_numpy(order[start : start + config.batch_size])
            out = net(Xt[idx])
            if n_classes == 2:
                loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], yt[idx].float())
            else:
                loss = nn.functional.cross_entropy(out, yt[idx])
            w1 = net[0].weight
            loss = loss + config.weight_decay / 2 * (w1**2).sum() + config.l1 * w1.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        out = net(Xt)
        if n_classes == 2:
            return (out[:, 0] * (2 * yt - 1)).numpy()
        correct = out.gather(1, yt[:, None])[:, 0]
        return (correct - out.scatter(1, yt[:, None], -np.inf).amax(1)).numpy()


@pytest.mark.parametrize(("hidden", "n_classes", "mode"), [
    ((16,), 2, "balanced"), ((), 2, "bernoulli"), ((8, 5), 3, "bernoulli"), ((), 3, "balanced")])
def test_batched_models_equal_models_trained_alone(hidden, n_classes, mode):
    X, y = data(n_classes=n_classes)
    config = TrainConfig(hidden=hidden, epochs=4, batch_size=16, lr=1e-2, weight_decay=1e-2,
                         l1=1e-3 if n_classes == 3 else 0.0)
    masks = MaskSampler(y, 0.6, mode=mode).sample(np.arange(5))
    result = EnsembleTrainer(X, y, config, device="cpu").train(masks, np.arange(5))
    for m in (0, 3):
        alone = train_alone(X, y, masks[m], config, n_classes, m)
        np.testing.assert_allclose(result.margins[m], alone, rtol=1e-4, atol=1e-4)
    heldout = ~masks
    expected = ((result.margins > 0) & heldout).sum(1) / heldout.sum(1)
    np.testing.assert_allclose(result.heldout_accuracy, expected, rtol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_handwritten_gradients_match_autograd(n_classes):
    X, y = data(n_classes=n_classes)
    trainer = EnsembleTrainer(X, y, TrainConfig(hidden=(7, 5)), device="cpu")
    params = trainer._init_params(np.arange(3))
    idx = torch.randint(0, X.shape[0], (3 * 10,))
    weight = (torch.rand(3, 10) > 0.2).float()
    xb = trainer.X[idx].view(3, 10, -1)
    acts = [torch.empty(3, 10, h) for h in (7, 5)]
    manual = trainer._gradients(params, xb, idx, weight, acts)
    leaves = [p.clone().requires_grad_(True) for p in params]
    logits = trainer.forward(leaves, xb)
    if n_classes == 2:
        losses = nn.functional.binary_cross_entropy_with_logits(
            logits, trainer.y_float[idx].view(3, 10), reduction="none")
    else:
        losses = nn.functional.cross_entropy(logits.reshape(30, -1), trainer.y[idx],
                                             reduction="none").view(3, 10)
    ((losses * weight).sum(1) / weight.sum(1)).sum().backward()
    for got, leaf in zip(manual, leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_cpu_results():
    X, y = data(n=150)
    trainer = EnsembleTrainer(X, y, TrainConfig(epochs=3, batch_size=32), device="cpu")
    masks = MaskSampler(y, 0.5, mode="bernoulli").sample(np.arange(70))
    full = trainer.train(masks, np.arange(70)).margins
    for chunk in (7, 64):
        parts = [trainer.train(masks[i : i + chunk], np.arange(i, min(i + chunk, 70))).margins
                 for i in range(0, 70, chunk)]
        np.testing.assert_array_equal(np.concatenate(parts), full)


def test_read_only_labels_train_without_a_warning():
    # pandas' category codes (adata.obs[key].cat.codes.to_numpy()) are read-only views
    X, y = data(n=60)
    codes = y.astype(np.int8)
    codes.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = EnsembleTrainer(X, codes, TrainConfig(epochs=2), device="cpu")
    masks = MaskSampler(y, 0.5).sample(np.arange(3))
    np.testing.assert_array_equal(
        trainer.train(masks, np.arange(3)).margins,
        EnsembleTrainer(X, y, TrainConfig(epochs=2), device="cpu").train(
            masks, np.arange(3)).margins)


def test_regularisation_shrinks_first_layer():
    X, y = data()
    masks = MaskSampler(y, 0.5).sample(np.arange(2))
    norms = []
    for wd in (0.0, 1.0):
        trainer = EnsembleTrainer(X, y, TrainConfig(hidden=(8,), epochs=10, batch_size=16,
                                                    lr=1e-2, weight_decay=wd), device="cpu")
        params = trainer._init_params(np.arange(2))
        trainer._fit(params, masks, np.arange(2), masks.sum(1))
        norms.append(float(params[0].norm()))
    assert norms[1] < 0.5 * norms[0]


def test_bad_inputs_are_refused():
    X, y = data()
    X_bad = X.copy()
    X_bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        EnsembleTrainer(X_bad, y, device="cpu")
    with pytest.raises(ValueError, match="hidden layer widths"):
        TrainConfig(hidden=(0,))
    trainer = EnsembleTrainer(X, y, device="cpu")
    with pytest.raises(ValueError, match="masks must be"):
        trainer.train(np.ones((2, 5), bool), [0, 1])
    with pytest.raises(ValueError, match="selects no training samples"):
        trainer.train(np.zeros((1, X.shape[0]), bool), [0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu():
    X, y = data()
    masks = MaskSampler(y, 0.5).sample(np.arange(8))
    cfg = TrainConfig(epochs=3, batch_size=16)
    cpu = EnsembleTrainer(X, y, cfg, device="cpu").train(masks, np.arange(8)).margins
    gpu = EnsembleTrainer(X, y, cfg, device="cuda").train(masks, np.arange(8)).margins
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_adam_flushes_subnormals_of_dead_units():
    """A dead unit's Adam moments decay and L2 pulls its weights through the subnormal range,
    where CPU multiplies are ~10x slower: training sets such values to zero."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3)).astype(np.float32)
    trainer = EnsembleTrainer(X, (X[:, 0] > 0).astype(np.int64), TrainConfig(hidden=(4,)),
                              device="cpu")
    params = trainer._init_params(np.arange(2))
    tiny = float(np.finfo(np.float32).tiny)
    params[0][0, 0, 0] = tiny / 8  # subnormal
    grads = [torch.zeros_like(p) for p in params]
    m = [torch.full_like(p, tiny / 4) for p in params]
    v = [torch.zeros_like(p) for p in params]
    trainer._adam_step(params, grads, m, v, torch.zeros(2), torch.ones(2, dtype=torch.bool))
    flush_subnormals(params + m + v, torch.tensor([True, False]))
    a = m[1].numpy()  # the first layer's bias: no L2, no gradient, a decaying moment
    assert ((a[1] != 0) & (np.abs(a[1]) < tiny)).all()  # an inactive model is left as it is
    for t in [x[:1] for x in params + m + v]:
        a = t.numpy()
        assert not ((a != 0) & (np.abs(a) < tiny)).any()


def test_adam_step_moves_active_models_only_and_buffers_change_nothing():
    """Idle models (their epoch over) are put back exactly; the active ones take the step they
    take with every model active; the step's scratch buffers give the same numbers."""
    X, y = data(n=40)
    trainer = EnsembleTrainer(X, y, TrainConfig(hidden=(6,), weight_decay=0.1, l1=0.01),
                              device="cpu")
    params = trainer._init_params(np.arange(5))
    rng = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=rng) for p in params]
    moments = [torch.rand(p.shape, generator=rng) for p in params]
    active = torch.tensor([True, False, True, True, False])

    def step(mask, scratch):
        state = [[x.clone() for x in xs] for xs in (params, grads, moments, moments)]
        count = torch.full((5,), 3.0)
        trainer._adam_step(*state, count, mask,
                           [torch.empty_like(p) for p in params] if scratch else None)
        return state[0] + state[2] + state[3], count

    mixed, count = step(active, scratch=True)
    unbuffered, _ = step(active, scratch=False)
    everyone, _ = step(torch.ones(5, dtype=torch.bool), scratch=True)
    before = params + moments + moments
    np.testing.assert_array_equal(count.numpy(), [4, 3, 4, 4, 3])
    for got, plain, full, start in zip(mixed, unbuffered, everyone, before, strict=True):
        torch.testing.assert_close(got, plain, rtol=0, atol=0)
        torch.testing.assert_close(got[~active], start[~active], rtol=0, atol=0)
        torch.testing.assert_close(got[active], full[active], rtol=0, atol=0)
        assert not torch.equal(got[active], start[active])
