"""MAML++, MR-MAML and task weighting: each against a reference unrolled by hand here."""
import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch
from torch.func import functional_call

import fewseg
import fewseg.data.base
from fewseg.algorithms.mamlpp import step_loss_weights
from fewseg.data.sampler import EpisodeSampler


def bce(model, params, x, y):
    return F.binary_cross_entropy_with_logits(functional_call(model, params, (x,)), y)


def unrolled_task_losses(model, theta, batch, steps, lr, adapt=None, create_graph=True):
    """[T] query losses after ``steps`` SGD steps on each task's support loss, written out by hand."""
    adapt = adapt or list(theta)
    out = []
    for t in range(batch.num_tasks):
        phi = dict(theta)
        for _ in range(steps):
            g = torch.autograd.grad(bce(model, phi, batch.support_x[t], batch.support_y[t]),
                                    [phi[n] for n in adapt], create_graph=create_graph)
            phi = {**phi, **{n: phi[n] - lr * gi for n, gi in zip(adapt, g)}}
        out.append(bce(model, phi, batch.query_x[t], batch.query_y[t]))
    return torch.stack(out)


# --- MAML++ -----------------------------------------------------------------------------------------
def test_step_loss_weights_anneal_from_uniform_to_the_last_step():
    assert step_loss_weights(4, 0, 10) == pytest.approx([0.25] * 4)
    mid = step_loss_weights(4, 5, 10)
    assert sum(mid) == pytest.approx(1) and mid[0] < 0.25 < mid[-1]
    late = step_loss_weights(4, 99, 100)
    assert late[0] == pytest.approx(0.03 / 4) and sum(late) == pytest.approx(1)
    assert step_loss_weights(4, 10, 10) == [0, 0, 0, 1]


def test_mamlpp_multi_step_loss_with_per_step_rates_and_norms_matches_a_hand_unrolled_reference():
    torch.manual_seed(3)
    model = fewseg.create_model("unet", depth=2, width=4).double()
    batch = random_batch(T=2, size=16, dtype=torch.float64)
    K = 2
    algo = fewseg.create_algorithm("maml++", model, inner_steps=K, inner_lr=0.1, msl_iterations=10,
                                   first_order_iterations=0).double()
    with torch.no_grad():  # make every step's rates and norm weights distinct
        for r in algo.step_rates.values():
            r.uniform_(0.05, 0.2)
        for s in algo.step_norms.values():
            s.add_(0.1 * torch.randn_like(s))
    assert algo.norm_names and not set(algo.norm_names) & set(algo.adapt_names)
    algo.outer_loss(batch, iteration=4).backward()

    key = (lambda n: n.replace(".", "__"))
    theta = dict(model.named_parameters())
    adapt = algo.adapt_names
    w = step_loss_weights(K, 4, 10)
    assert 0 < w[0] < w[1]
    total = 0
    for t in range(2):
        phi = {n: theta[n] for n in adapt}
        for k in range(K):
            norms = {n: algo.step_norms[key(n)][k] for n in algo.norm_names}
            loss = bce(model, {**theta, **norms, **phi}, batch.support_x[t], batch.support_y[t])
            g = torch.autograd.grad(loss, [phi[n] for n in adapt], create_graph=True)
            phi = {n: phi[n] - algo.step_rates[key(n)][k] * gi for n, gi in zip(adapt, g)}
            after = {n: algo.step_norms[key(n)][k + 1] for n in algo.norm_names}
            total = total + w[k] * bce(model, {**theta, **after, **phi}, batch.query_x[t], batch.query_y[t]) / 2
    leaves = [theta[n] for n in adapt] + list(algo.step_rates.values()) + list(algo.step_norms.values())
    ref = torch.autograd.grad(total, leaves)
    got = [theta[n].grad for n in adapt] + [p.grad for p in algo.step_rates.values()] + \
          [p.grad for p in algo.step_norms.values()]
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-7, atol=1e-12)
    # the model's own norm weights are replaced by the per-step copies: they get no gradient
    assert all(theta[n].grad is None for n in algo.norm_names)


def test_mamlpp_derivative_order_annealing_is_first_order_before_the_switch():
    torch.manual_seed(4)
    batch = random_batch(T=2, dtype=torch.float64)

    def grads(iteration, **kw):
        torch.manual_seed(5)
        model = fewseg.create_model("seed-cnn", width=4).double()
        algo = fewseg.create_algorithm("maml++", model, inner_steps=2, inner_lr=0.3, multi_step_loss=False,
                                       learned_rates=False, first_order_iterations=3, **kw)
        algo.outer_loss(batch, iteration=iteration).backward()
        return model, [p.grad for p in model.parameters()]

    model, early = grads(2)
    theta = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    first = torch.autograd.grad(unrolled_task_losses(model, theta, batch, 2, 0.3, create_graph=False).mean(),
                                list(theta.values()))
    second = torch.autograd.grad(unrolled_task_losses(model, theta, batch, 2, 0.3).mean(), list(theta.values()))
    _, late = grads(3)
    for e, lt, f, s in zip(early, late, first, second):
        assert torch.allclose(e, f, atol=1e-12) and torch.allclose(lt, s, atol=1e-12)
    assert any(not torch.allclose(f, s) for f, s in zip(first, second))


# --- MR-MAML ----------------------------------------------------------------------------------------
def test_mrmaml_samples_the_shared_block_adds_the_kl_and_matches_a_hand_reference():
    torch.manual_seed(6)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=2, dtype=torch.float64)
    algo = fewseg.create_algorithm("mr-maml", model, inner_steps=2, inner_lr=0.3, kl_weight=0.01,
                                   init_log_sigma=-2.0, noise_seed=7).double()
    assert algo.stochastic_names == ["0.weight", "0.bias"]
    assert algo.adapt_names == ["2.weight", "2.bias", "4.weight", "4.bias"]
    algo.outer_loss(batch, iteration=5).backward()

    theta = dict(model.named_parameters())
    sig = {n: algo.log_sigma[n.replace(".", "__")] for n in algo.stochastic_names}
    total = 0
    for t in range(2):  # one draw per task, from the documented seed (noise_seed, iteration, draw)
        g = torch.Generator().manual_seed(7 * 1_000_003 + 5 * 1_009 + t)
        noisy = {n: theta[n] + sig[n].exp() * torch.randn(theta[n].shape, generator=g).double() for n in sig}
        total = total + unrolled_task_losses(model, {**theta, **noisy}, _one(batch, t),
                                             2, 0.3, adapt=algo.adapt_names)[0] / 2
    dist = torch.distributions
    kl = sum(dist.kl_divergence(dist.Normal(theta[n], sig[n].exp()), dist.Normal(0.0, 1.0)).sum() for n in sig)
    assert torch.allclose(algo.kl(), kl)
    total = total + 0.01 * kl
    leaves = list(theta.values()) + list(sig.values())
    ref = torch.autograd.grad(total, leaves)
    got = [p.grad for p in theta.values()] + [s.grad for s in sig.values()]
    for g_, r in zip(got, ref):
        assert torch.allclose(g_, r, rtol=1e-7, atol=1e-12)
    # test time: the means, deterministic, and the stochastic block is never adapted
    algo.eval()
    a1 = algo.adapt(batch.support_x[0], batch.support_y[0])
    a2 = algo.adapt(batch.support_x[0], batch.support_y[0])
    for n in theta:
        assert torch.equal(a1.params[n], a2.params[n])
    for n in algo.stochastic_names:
        assert torch.equal(a1.params[n], theta[n].detach())


def _one(batch, t):
    return fewseg.MetaBatch(batch.support_x[t:t + 1], batch.support_y[t:t + 1], batch.query_x[t:t + 1],
                            batch.query_y[t:t + 1])


# --- task weighting ---------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_hard_task_weighting_is_a_softmax_of_detached_losses(strategy):
    torch.manual_seed(8)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=3, dtype=torch.float64)
    batch.query_y[2] = 1.0  # a harder task
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.3, task_weighting="hard",
                                   weight_temperature=0.002, strategy=strategy)
    logs = algo.meta_backward(batch, iteration=0)
    theta = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    losses = unrolled_task_losses(model, theta, batch, 1, 0.3)
    w = torch.softmax(losses.detach() / 0.002, 0)
    assert logs["task_weights"] == pytest.approx(w.tolist()) and max(logs["task_weights"]) > 0.4
    ref = torch.autograd.grad((w * losses).sum(), list(theta.values()))
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.grad, r, rtol=1e-6, atol=1e-12)
    # the whole-graph loss agrees; with weight_grad the gradient also flows into the weights
    model.zero_grad()
    algo.outer_loss(batch, iteration=0).backward()
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.grad, r, rtol=1e-6, atol=1e-12)
    model.zero_grad()
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.3, task_weighting="hard",
                                   weight_temperature=0.002, weight_grad=True, strategy=strategy)
    algo.meta_backward(batch, iteration=0)
    losses = unrolled_task_losses(model, theta, batch, 1, 0.3)
    ref2 = torch.autograd.grad((torch.softmax(losses / 0.002, 0) * losses).sum(), list(theta.values()))
    for p, r in zip(model.parameters(), ref2):
        assert torch.allclose(p.grad, r, rtol=1e-6, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(ref, ref2))


def test_class_frequency_weighting_rebalances_by_image_count_and_names_unknown_classes():
    torch.manual_seed(9)
    model = fewseg.create_model("seed-cnn", width=4).double()
    b = random_batch(T=3, dtype=torch.float64)
    batch = fewseg.MetaBatch(b.support_x, b.support_y, b.query_x, b.query_y, class_ids=[4, 5, 4])
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.3, task_weighting="class-frequency")
    with pytest.raises(ValueError, match="image count"):
        algo.meta_backward(batch, iteration=0)
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.3, task_weighting="class-frequency",
                                   class_counts={4: 30, 5: 10})
    logs = algo.meta_backward(batch, iteration=0)
    assert logs["task_weights"] == pytest.approx([0.2, 0.6, 0.2])
    theta = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    losses = unrolled_task_losses(model, theta, batch, 1, 0.3)
    ref = torch.autograd.grad((torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64) * losses).sum(),
                              list(theta.values()))
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.grad, r, rtol=1e-6, atol=1e-12)


class LongTail(fewseg.data.base.SegmentationDataset):
    """Class 1 has 30 images, class 2 has 6."""

    name = "long-tail"

    def __init__(self):
        self.class_names = {1: "common", 2: "rare"}

    def items(self, class_id):
        return list(range(30 if class_id == 1 else 6))

    def load(self, key, class_id):
        return fewseg.data.base.Sample(torch.zeros(3, 8, 8), torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, dtype=bool))


def test_sampler_draws_classes_by_image_count_when_asked():
    ds = LongTail()
    sampler = EpisodeSampler(ds, 1, 1, seed=0, class_sampling="images")
    drawn = [sampler.sample().class_id for _ in range(600)]
    assert sampler.class_counts() == {1: 30, 2: 6}
    assert 0.75 < drawn.count(1) / 600 < 0.92  # expected 30/36 = 0.83
    uniform = EpisodeSampler(ds, 1, 1, seed=0)
    drawn = [uniform.sample().class_id for _ in range(600)]
    assert 0.4 < drawn.count(1) / 600 < 0.6
    with pytest.raises(ValueError, match="class_sampling"):
        EpisodeSampler(ds, 1, 1, class_sampling="zipf")


@pytest.mark.parametrize("overrides", [["algorithm.options.task_weighting=hard"],
                                       ["algorithm.options.task_weighting=class-frequency",
                                        "train.class_sampling=images"]])
def test_weighted_training_logs_its_task_weights(overrides, tmp_path):
    import json

    from test_train import tiny

    from fewseg.engine.trainer import Trainer
    Trainer(tiny(tmp_path, *overrides), progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(len(r["task_weights"]) == 2 and sum(r["task_weights"]) == pytest.approx(1) for r in rows)
