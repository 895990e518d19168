"""The MAML family beyond MAML: each against a reference computed by hand here."""
import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch
from torch.func import functional_call

import fewseg


def bce(model, params, x, y):
    return F.binary_cross_entropy_with_logits(functional_call(model, params, (x,)), y)


def test_reptile_update_is_theta_plus_epsilon_mean_of_phi_minus_theta():
    torch.manual_seed(0)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=3, dtype=torch.float64)
    algo = fewseg.create_algorithm("reptile", model, inner_steps=3, inner_lr=0.3)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    phis = []
    for t in range(3):  # explicit SGD on support + query images of the task
        x = torch.cat([batch.support_x[t], batch.query_x[t]])
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        phi = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
        for _ in range(3):
            grads = torch.autograd.grad(bce(model, phi, x, y), list(phi.values()))
            phi = {n: (p - 0.3 * g).detach().requires_grad_(True) for (n, p), g in zip(phi.items(), grads)}
        phis.append(phi)
    eps = 0.5
    expected = {n: theta[n] + eps * torch.stack([phi[n] - theta[n] for phi in phis]).mean(0) for n in theta}
    opt = torch.optim.SGD(model.parameters(), lr=eps)
    opt.zero_grad()
    algo.meta_backward(batch, iteration=0)
    opt.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-12), n
    # the surrogate outer loss has the same gradient
    model.zero_grad()
    for n, p in model.named_parameters():
        p.data.copy_(theta[n])
    algo.outer_loss(batch, iteration=0).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, theta[n] - torch.stack([phi[n] for phi in phis]).mean(0), atol=1e-12)


def test_metasgd_gradient_with_respect_to_the_learned_rates():
    torch.manual_seed(1)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=2, dtype=torch.float64)
    algo = fewseg.create_algorithm("meta-sgd", model, inner_steps=2, inner_lr=0.1).double()
    with torch.no_grad():  # distinct rates per element
        for r in algo.rates.values():
            r.uniform_(0.05, 0.2)
    algo.outer_loss(batch, iteration=0).backward()
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    alphas = [algo.rates[n.replace(".", "__")] for n in names]
    total = 0
    for t in range(2):
        phi = list(theta)
        for _ in range(2):
            grads = torch.autograd.grad(bce(model, dict(zip(names, phi)), batch.support_x[t], batch.support_y[t]),
                                        phi, create_graph=True)
            phi = [p - a * g for p, a, g in zip(phi, alphas, grads)]
        total = total + bce(model, dict(zip(names, phi)), batch.query_x[t], batch.query_y[t]) / 2
    ref = torch.autograd.grad(total, alphas + theta)
    got = [a.grad for a in alphas] + [p.grad for p in theta]
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-7, atol=1e-12)
    assert all(a.grad.abs().sum() > 0 for a in alphas)


def test_anil_adapts_only_the_head_and_matches_a_head_only_reference():
    torch.manual_seed(2)
    model = fewseg.create_model("seed-cnn", width=4).double()
    batch = random_batch(T=2, dtype=torch.float64)
    algo = fewseg.create_algorithm("anil", model, inner_steps=2, inner_lr=0.5)
    assert algo.adapt_names == ["4.weight", "4.bias"]
    adapted = algo.adapt(batch.support_x[0], batch.support_y[0])
    for n, p in model.named_parameters():
        assert torch.equal(adapted.params[n], p.detach()) == (not n.startswith("4."))
    algo.outer_loss(batch, iteration=0).backward()
    names = [n for n, _ in model.named_parameters()]
    theta = dict(model.named_parameters())
    total = 0
    for t in range(2):
        head = [theta["4.weight"], theta["4.bias"]]
        for _ in range(2):
            p = {**theta, "4.weight": head[0], "4.bias": head[1]}
            grads = torch.autograd.grad(bce(model, p, batch.support_x[t], batch.support_y[t]), head, create_graph=True)
            head = [h - 0.5 * g for h, g in zip(head, grads)]
        total = total + bce(model, {**theta, "4.weight": head[0], "4.bias": head[1]},
                            batch.query_x[t], batch.query_y[t]) / 2
    ref = torch.autograd.grad(total, [theta[n] for n in names])
    for n, r in zip(names, ref):
        assert torch.allclose(theta[n].grad, r, rtol=1e-7, atol=1e-12), n


@pytest.mark.parametrize("name", ["reptile", "meta-sgd", "anil", "fomaml", "maml++", "mr-maml"])
def test_every_algorithm_trains_checkpoints_and_evaluates(name, tmp_path):
    from test_train import TINY

    from fewseg.config import config_from_dict
    from fewseg.engine.session import evaluate_checkpoint, load_algorithm
    from fewseg.engine.trainer import Trainer
    extra = ["train.outer_optimizer=sgd", "train.outer_lr=0.5"] if name == "reptile" else []
    trainer = Trainer(config_from_dict(TINY, [f"output={tmp_path}", f"algorithm.name={name}", *extra]),
                      progress=False)
    trainer.fit()
    _, algo, _ = load_algorithm(tmp_path / "checkpoints" / "last")
    for (k, a), b in zip(trainer.algo.state_dict().items(), algo.state_dict().values()):
        assert torch.equal(a, b), k
    record = evaluate_checkpoint(tmp_path, shots=[1], episodes=2, log=lambda *_: None)
    assert 0 <= record["results"]["1"][name]["miou"] <= 1


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_anil_feature_cache_is_the_same_mathematics_as_whole_network_steps(strategy):
    """unet has no encoder split (``encoder_prefix``): ANIL caches ``features(x)`` and steps the head alone."""
    batch = random_batch(T=2, dtype=torch.float64)
    grads, adapted, body_passes = [], [], []
    for cache in (True, False):
        torch.manual_seed(3)
        model = fewseg.create_model("unet", depth=2, width=4).double()
        algo = fewseg.create_algorithm("anil", model, inner_steps=2, inner_lr=0.5, cache_encoder=cache,
                                       strategy=strategy)
        params, forward = algo.params_and_forward()
        assert algo.cache_encoder == cache and (algo.inner_view(forward, params).encode is not None) == cache
        calls = []
        hook = model.down[0].register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
        algo.meta_backward(batch, iteration=0)
        hook.remove()
        body_passes.append(len(calls))
        grads.append([p.grad for p in model.parameters()])
        adapted.append(algo.adapt(batch.support_x[0], batch.support_y[0], steps=3).predict(batch.query_x[0]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert torch.allclose(adapted[0], adapted[1], atol=1e-12)
    assert body_passes[0] < body_passes[1]  # the body once per task, against once per inner step


def _toy_encoder_unet():
    from fewseg.models.encoder_unet import EncoderUNet

    class Toy(EncoderUNet):  # encoder_prefix "encoder.", head_prefix "head." and features(): both splits
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Conv2d(4, 8, 3, 2, 1)])
            self._build_decoder([4, 8], decoder_width=4)
            self._finish()

        def encoder_maps(self, x):
            a = self.encoder[0](x)
            return [a, self.encoder[1](a)]

        def encoder_stages(self):
            return {n: int(n.split(".")[0]) for n, _ in self.encoder.named_parameters()}
    return Toy()


def test_anil_caches_the_whole_body_and_steps_the_head_alone():
    batch = random_batch(T=2, S=2, Q=2, size=16, dtype=torch.float64)
    grads, passes = [], []
    for cache in (True, False):
        torch.manual_seed(0)
        model = _toy_encoder_unet().double()
        algo = fewseg.create_algorithm("anil", model, inner_steps=3, inner_lr=0.5, cache_encoder=cache)
        assert algo.encoder_is_fixed() == cache and algo.head_alone
        calls = {"encoder": 0, "decoder": 0}
        for part, module in (("encoder", model.encoder[0]), ("decoder", model.last)):
            module.register_forward_hook(lambda m, i, o, part=part, calls=calls: calls.update({part: calls[part] + 1}))
        algo.meta_backward(batch, iteration=0)
        grads.append([p.grad for p in model.parameters()])
        passes.append(calls)
    assert passes[0]["encoder"] == 2 * 2 and passes[1]["encoder"] == 2 * (3 + 1)  # support + query, per task
    assert passes[0]["decoder"] == 2 * 2 and passes[1]["decoder"] == 2 * (3 + 1)  # the body once per image
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_inner_loop_spec_is_one_frozen_value():
    import dataclasses

    from fewseg.algorithms.inner_loop import InnerLoopSpec
    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1, proximal=0.1)
    spec = algo.inner_spec(lambda p, x: x, create_graph=True)
    assert isinstance(spec, InnerLoopSpec) and spec.proximal == 0.1 and spec.create_graph and spec.keep_graph
    assert tuple(spec.adapt_names) == tuple(algo.adapt_names) and spec.loss_fn is algo.loss_fn
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.proximal = 0.0


@pytest.mark.parametrize("name", ["maml", "anil", "reptile", "task-attention", "maml++"])
def test_adaptation_is_built_from_hooks_not_overrides(name):
    """Every algorithm adapts through the base's ``adapt_run``: it overrides hooks (task_start, inner_view,
    adapt_steps), never the wrapping."""
    from fewseg.registry import ALGORITHMS
    assert "adapt_run" not in vars(ALGORITHMS.get(name))
    torch.manual_seed(0)
    algo = fewseg.create_algorithm(name, fewseg.create_model("seed-cnn", width=4), inner_steps=2, inner_lr=0.1)
    ep = random_batch(T=1, S=2, Q=1, size=8).task(0)
    seen = []
    adapted = algo.adapt_run(ep.support_x, ep.support_y, None, 2, on_step=lambda k, a: seen.append((k, a)))
    assert [k for k, _ in seen] == [1, 2]
    assert all(torch.equal(adapted.params[n], seen[-1][1].params[n]) for n in adapted.params)
    assert set(adapted.params) == {n for n, _ in algo.model.named_parameters()}
