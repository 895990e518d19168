"""Meta-gradients against explicit unrolled computations and finite differences."""
import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch
from torch.func import functional_call

import fewseg


def unrolled_meta_grad(model, batch, steps, lr, first_order=False):
    """Reference: a plain loop over tasks with torch.autograd.grad(create_graph=True), written out here."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    total = 0.0
    for t in range(batch.num_tasks):
        phi = list(theta)
        si = batch.support_ignore[t] if batch.support_ignore is not None else None
        qi = batch.query_ignore[t] if batch.query_ignore is not None else None
        for _ in range(steps):
            logits = functional_call(model, dict(zip(names, phi)), (batch.support_x[t],))
            w = torch.ones_like(logits) if si is None else (~si).to(logits.dtype)
            loss = (F.binary_cross_entropy_with_logits(logits, batch.support_y[t], reduction="none") * w).sum() / w.sum()
            grads = torch.autograd.grad(loss, phi, create_graph=not first_order)
            phi = [p - lr * (g if not first_order else g.detach()) for p, g in zip(phi, grads)]
        logits = functional_call(model, dict(zip(names, phi)), (batch.query_x[t],))
        w = torch.ones_like(logits) if qi is None else (~qi).to(logits.dtype)
        qloss = (F.binary_cross_entropy_with_logits(logits, batch.query_y[t], reduction="none") * w).sum() / w.sum()
        total = total + qloss / batch.num_tasks
    return total.detach(), torch.autograd.grad(total, theta)


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


def assert_close_rel(got, want, rtol=1e-5):
    """Max abs difference relative to the largest gradient entry (biases before GroupNorm have ~0 gradient)."""
    g = torch.cat([t.flatten() for t in got])
    w = torch.cat([t.flatten() for t in want])
    assert g.shape == w.shape
    err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
    assert err < rtol, err


MODELS = [("seed-cnn", {}), ("unet", {"depth": 3, "width": 8})]


@pytest.mark.parametrize("model_name,kwargs", MODELS)
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(model_name, kwargs, strategy):
    torch.manual_seed(0)
    model = fewseg.create_model(model_name, **kwargs).double()
    batch = random_batch(T=3, S=2, Q=2, size=16, dtype=torch.float64, ignore=True)
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.3, strategy=strategy)
    ref_loss, ref_grads = unrolled_meta_grad(model, batch, steps=2, lr=0.3)

    loss = algo.outer_loss(batch, iteration=0)
    loss.backward()
    assert torch.allclose(loss.detach(), ref_loss, rtol=1e-10)
    assert_close_rel(grads_of(model), ref_grads)

    model.zero_grad()
    logs = algo.meta_backward(batch, iteration=0)  # chunked backward: same gradient
    assert abs(logs["loss"] - float(ref_loss)) < 1e-8
    assert_close_rel(grads_of(model), ref_grads)


def test_meta_gradient_float32_seed_cnn_default_settings():
    torch.manual_seed(1)
    model = fewseg.create_model("seed-cnn")
    batch = random_batch(T=2, S=5, Q=5, size=16)
    algo = fewseg.create_algorithm("maml", model, inner_steps=5, inner_lr=0.01)
    _, ref = unrolled_meta_grad(model, batch, steps=5, lr=0.01)
    algo.outer_loss(batch, iteration=0).backward()
    assert_close_rel(grads_of(model), ref, rtol=1e-5)


def test_second_order_differs_from_first_order():
    torch.manual_seed(2)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=1, dtype=torch.float64)
    _, so = unrolled_meta_grad(model, batch, steps=2, lr=0.5)
    _, fo = unrolled_meta_grad(model, batch, steps=2, lr=0.5, first_order=True)
    assert max(float((a - b).abs().max()) for a, b in zip(so, fo)) > 1e-6


def test_meta_gradient_matches_central_finite_differences():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.Conv2d(2, 1, 1)).double()
    batch = random_batch(T=2, S=2, Q=2, size=6, dtype=torch.float64)
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.5)
    algo.outer_loss(batch, iteration=0).backward()
    analytic = torch.cat([p.grad.flatten() for p in model.parameters()])
    numeric = []
    eps = 1e-6
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                plus = algo.outer_loss(batch, iteration=0).item()
                flat[i] = old - eps
                minus = algo.outer_loss(batch, iteration=0).item()
                flat[i] = old
                numeric.append((plus - minus) / (2 * eps))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8), (analytic - numeric).abs().max()


@pytest.mark.parametrize("name,kwargs", [("fomaml", {}), ("maml", {"first_order": True})])
def test_first_order_gradient_is_query_gradient_at_adapted_weights(name, kwargs):
    torch.manual_seed(4)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=2, dtype=torch.float64)
    algo = fewseg.create_algorithm(name, model, inner_steps=3, inner_lr=0.2, **kwargs)
    algo.outer_loss(batch, iteration=0).backward()
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for t in range(batch.num_tasks):
        adapted = algo.adapt(batch.support_x[t], batch.support_y[t], steps=3)
        phi = {n: p.clone().requires_grad_(True) for n, p in adapted.params.items()}
        qloss = F.binary_cross_entropy_with_logits(functional_call(model, phi, (batch.query_x[t],)), batch.query_y[t])
        gs = torch.autograd.grad(qloss, list(phi.values()))
        expected = [e + g / batch.num_tasks for e, g in zip(expected, gs)]
    assert_close_rel(grads_of(model), expected, rtol=1e-9)


def test_adapt_lowers_support_loss_and_builds_no_graph():
    torch.manual_seed(5)
    model = fewseg.create_model("seed-cnn")
    batch = random_batch(T=1, S=5, size=16)
    algo = fewseg.create_algorithm("maml", model, inner_steps=5, inner_lr=0.5)
    sx, sy = batch.support_x[0], batch.support_y[0]
    before = F.binary_cross_entropy_with_logits(model(sx), sy).item()
    adapted = algo.adapt(sx, sy, steps=10)
    after = F.binary_cross_entropy_with_logits(adapted.logits(sx), sy).item()
    assert after < before
    assert all(not p.requires_grad for p in adapted.params.values())
    probs = adapted.predict(sx)
    assert probs.shape == sy.shape and float(probs.min()) >= 0 and float(probs.max()) <= 1
    assert all(p.grad is None for p in model.parameters())


def test_ignored_pixels_do_not_change_the_meta_loss():
    model = fewseg.create_model("seed-cnn", width=4)
    batch = random_batch(T=2, ignore=True)
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.1)
    base = algo.outer_loss(batch, iteration=0).item()
    flipped = fewseg.MetaBatch(batch.support_x, torch.where(batch.support_ignore, 1 - batch.support_y, batch.support_y),
                               batch.query_x, torch.where(batch.query_ignore, 1 - batch.query_y, batch.query_y),
                               batch.support_ignore, batch.query_ignore)
    assert abs(algo.outer_loss(flipped, iteration=0).item() - base) < 1e-6
