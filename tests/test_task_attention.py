"""task-attention: MAML whose initialisation is FiLM-modulated per task by attention over a learned memory."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ctrl_c_during, random_batch, tiny_config, tiny_eval
from torch.func import functional_call

import fewseg
from fewseg.algorithms.test_time import AdaptationPlan
from fewseg.config import config_from_dict
from fewseg.engine.session import evaluate_checkpoint, load_algorithm
from fewseg.engine.trainer import Trainer, resume_trainer
from fewseg.errors import TrainingError

UNET = ("unet", {"depth": 2, "width": 4})


def make(model_name="unet", model_kwargs=None, seed=0, perturb=True, **options):
    torch.manual_seed(seed)
    model = fewseg.create_model(model_name, **(model_kwargs if model_kwargs is not None else UNET[1])).double()
    algo = fewseg.create_algorithm("task-attention", model, **{"inner_steps": 2, "inner_lr": 0.3, **options}).double()
    if perturb:  # away from the identity modulation it starts with, so every path carries a gradient
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            algo.film_weight.copy_(0.3 * torch.randn(algo.film_weight.shape, generator=g))
            algo.film_bias.copy_(0.1 * torch.randn(algo.film_bias.shape, generator=g))
    return model, algo


def weighted_bce(logits, y, ignore):
    w = (~ignore).to(logits.dtype)
    return (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()


def prototype(model, sx, sy, si):
    """[fg, bg] mean features over the non-ignored pixels of all support images, written out."""
    feats = model.features(sx)
    valid = (~si).to(feats.dtype)
    fg, bg = sy * valid, (1 - sy) * valid
    return torch.cat([(feats * fg).sum((0, 2, 3)) / fg.sum(), (feats * bg).sum((0, 2, 3)) / bg.sum()])


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def reference_outer_loss(model, algo, batch, steps, lr, first_order=False, batch_attention=False):
    """Representation, attention, FiLM of the initialisation, K explicit SGD steps, query loss, mean over tasks."""
    theta = dict(model.named_parameters())
    modules = dict(model.named_modules())
    tau = algo.temperature
    with torch.no_grad():
        others = [prototype(model, batch.support_x[j], batch.support_y[j], batch.support_ignore[j])
                  for j in range(batch.num_tasks)]
    total = 0.0
    for i in range(batch.num_tasks):
        sx, sy, si = batch.support_x[i], batch.support_y[i], batch.support_ignore[i]
        t = prototype(model, sx, sy, si)
        q = unit(algo.query_weight @ t + algo.query_bias)
        scores = [unit(algo.memory_keys) @ q / tau]
        values = [algo.memory_values]
        if batch_attention:
            for j in range(batch.num_tasks):
                if j != i:
                    scores.append((unit(algo.query_weight @ others[j] + algo.query_bias) @ q / tau).reshape(1))
                    values.append((algo.value_weight @ others[j] + algo.value_bias).reshape(1, -1))
        s = torch.cat(scores)
        a = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
        r = a @ torch.cat(values)
        z = algo.film_weight @ r + algo.film_bias
        total_c = sum(modules[n].weight.shape[0] for n in algo.modulated_layers)
        phi, offset = dict(theta), 0
        for layer in algo.modulated_layers:
            c = modules[layer].weight.shape[0]
            gamma = 1 + torch.tanh(z[offset:offset + c])
            beta = z[total_c + offset:total_c + offset + c]
            w = theta[f"{layer}.weight"]
            phi[f"{layer}.weight"] = gamma.reshape(-1, *[1] * (w.dim() - 1)) * w
            if f"{layer}.bias" in theta:
                phi[f"{layer}.bias"] = gamma * theta[f"{layer}.bias"] + beta
            offset += c
        for _ in range(steps):
            loss = weighted_bce(functional_call(model, phi, (sx,)), sy, si)
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=not first_order)
            phi = {n: p - lr * (g.detach() if first_order else g) for (n, p), g in zip(phi.items(), grads)}
        qloss = weighted_bce(functional_call(model, phi, (batch.query_x[i],)), batch.query_y[i], batch.query_ignore[i])
        total = total + qloss / batch.num_tasks
    return total


def rel_err(got, want):
    g = torch.cat([t.flatten() for t in got])
    w = torch.cat([t.flatten() for t in want])
    return float((g - w).abs().max() / w.abs().max())


CASES = [
    ("unet", {"strategy": "loop"}),
    ("unet", {"strategy": "vmap", "batch_attention": True, "modulate_pattern": "."}),  # convs and norms, head too
    ("unet", {"strategy": "loop", "batch_attention": True, "memory_slots": 3}),
    ("seed-cnn", {"first_order": True}),
]


@pytest.mark.parametrize("model_name,options", CASES, ids=["unet-loop", "unet-vmap-batch-all", "unet-batch-3",
                                                           "seed-cnn-first-order"])
def test_meta_gradient_matches_a_hand_unrolled_float64_reference(model_name, options):
    model, algo = make(model_name, None if model_name == "unet" else {"width": 4}, **options)
    batch = random_batch(T=3, S=2, Q=2, size=16, dtype=torch.float64, ignore=True)
    logs = algo.meta_backward(batch, iteration=0)
    got = [p.grad for p in algo.parameters()]
    ref_loss = reference_outer_loss(model, algo, batch, 2, 0.3, first_order=options.get("first_order", False),
                                    batch_attention=options.get("batch_attention", False))
    ref = torch.autograd.grad(ref_loss, list(algo.parameters()))
    assert abs(logs["loss"] - ref_loss.item()) < 1e-10 * abs(ref_loss.item())
    assert all(g is not None for g in got)
    assert rel_err(got, ref) < 1e-10
    for name in ("memory_keys", "memory_values", "query_weight", "film_weight"):  # the memory learns
        assert float(getattr(algo, name).grad.abs().max()) > 0, name
    algo.zero_grad()  # the whole-graph loss agrees
    algo.outer_loss(batch, iteration=0).backward()
    assert rel_err([p.grad for p in algo.parameters()], ref) < 1e-10


@pytest.mark.parametrize("how", ["modulation-off", "fresh-identity"])
def test_it_is_exactly_maml_with_the_modulation_off_or_at_its_identity_start(how):
    torch.manual_seed(0)
    model = fewseg.create_model(*UNET[:1], **UNET[1]).double()
    twin = copy.deepcopy(model)
    batch = random_batch(T=2, S=2, Q=2, size=16, dtype=torch.float64, ignore=True)
    options = {"inner_steps": 2, "inner_lr": 0.3}
    algo = fewseg.create_algorithm("task-attention", model, modulation=(how == "fresh-identity"), **options)
    maml = fewseg.create_algorithm("maml", twin, **options)
    if how == "modulation-off":
        assert [n for n, _ in algo.named_parameters()] == [n for n, _ in maml.named_parameters()]
    else:
        assert float(algo.film_weight.detach().abs().max()) == 0
    mine = algo.meta_backward(batch, iteration=0)
    theirs = maml.meta_backward(batch, iteration=0)
    assert abs(mine["loss"] - theirs["loss"]) <= 1e-12 * abs(theirs["loss"])
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-15), n
    ep = batch.task(0)
    assert torch.allclose(algo.eval().adapt(ep.support_x, ep.support_y).predict(ep.query_x),
                          maml.eval().adapt(ep.support_x, ep.support_y).predict(ep.query_x), rtol=0, atol=1e-12)


def test_the_modulation_depends_on_the_support_set_not_its_order_and_skips_ignored_labels():
    _, algo = make()
    algo = algo.float()
    batch = random_batch(T=2, S=4, size=16, ignore=True)
    sx, sy, si = batch.support_x[0], batch.support_y[0], batch.support_ignore[0]
    perm = torch.tensor([2, 0, 3, 1])
    base = algo.modulation_of(sx, sy, si)
    permuted = algo.modulation_of(sx[perm], sy[perm], si[perm])
    other = algo.modulation_of(batch.support_x[1], batch.support_y[1], batch.support_ignore[1])
    for layer, (gamma, beta) in base.items():
        assert torch.allclose(gamma, permuted[layer][0], atol=1e-6) and torch.allclose(beta, permuted[layer][1],
                                                                                      atol=1e-6)
    assert max(float((base[n][0] - other[n][0]).detach().abs().max()) for n in base) > 1e-3
    assert torch.allclose(algo.attention(sx, sy, si), algo.attention(sx[perm], sy[perm], si[perm]), atol=1e-6)
    assert not torch.allclose(algo.attention(sx, sy, si), algo.attention(batch.support_x[1], batch.support_y[1]))
    # the label of an ignored pixel plays no part; the label of a counted one does
    flipped = torch.where(si, 1 - sy, sy)
    assert torch.allclose(algo.represent(sx, sy, si), algo.represent(sx, flipped, si), atol=1e-6)
    assert not torch.allclose(algo.represent(sx, sy), algo.represent(sx, flipped))


def test_test_time_adaptation_starts_from_the_tasks_own_modulated_weights():
    model, algo = make()
    algo.eval()
    ep = random_batch(T=1, S=2, Q=2, size=16, dtype=torch.float64).task(0)
    start = algo.adapt(ep.support_x, ep.support_y, steps=0).params
    theta = dict(model.named_parameters())
    expected = algo.modulate(theta, ep.support_x, ep.support_y)
    assert all(torch.equal(start[n], expected[n].detach()) for n in theta)
    layer = algo.modulated_layers[0]
    assert not torch.allclose(start[f"{layer}.weight"], theta[f"{layer}.weight"])
    # plans (here: augmented views) work unchanged; the relations are the memory's only
    algo.test_time = {2: AdaptationPlan(steps=1, views=1)}
    adapted = algo.adapt(ep.support_x, ep.support_y)
    assert adapted.info["support_images"] == 4 and adapted.predict(ep.query_x).shape == ep.query_y.shape
    weights = algo.attention(ep.support_x, ep.support_y)
    assert weights.shape == (algo.memory_slots,) and math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12)


def test_batch_attention_leaves_each_task_out_of_its_own_slots():
    _, with_batch = make(batch_attention=True)
    _, memory_only = make()
    one = random_batch(T=1, S=2, Q=2, size=16, dtype=torch.float64)
    assert with_batch.outer_loss(one, iteration=0).item() == pytest.approx(
        memory_only.outer_loss(one, iteration=0).item(), rel=1e-12)  # alone in its batch: only the memory
    two = random_batch(T=2, S=2, Q=2, size=16, dtype=torch.float64)
    assert abs(with_batch.outer_loss(two, iteration=0).item() - memory_only.outer_loss(two, iteration=0).item()) > 1e-8
    assert with_batch._context is None  # the batch context lives for one meta-step only


def test_a_model_without_features_is_read_at_the_input_of_its_head():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(5, 1, 1))
    algo = fewseg.create_algorithm("task-attention", model, inner_steps=1)
    assert algo.modulated_layers == ["0"] and algo.feature_channels == 5
    ep = random_batch(T=1, S=2, size=8).task(0)
    feats = torch.relu(model[0](ep.support_x))
    fg, bg = ep.support_y, 1 - ep.support_y
    want = torch.cat([(feats * fg).sum((0, 2, 3)) / fg.sum(), (feats * bg).sum((0, 2, 3)) / bg.sum()])
    assert torch.allclose(algo.represent(ep.support_x, ep.support_y), want, atol=1e-6)
    assert algo.adapt(ep.support_x, ep.support_y, steps=1).predict(ep.query_x).shape == ep.query_y.shape


@pytest.mark.parametrize("kwargs,message", [
    ({"inner_checkpoint": True}, ("inner_checkpoint=True is not supported by algorithm 'task-attention': the "
                                  "recomputation starts from task_params")),
    ({"modulation": False, "memory_slots": 4}, "memory_slots applies only with modulation=True"),
    ({"memory_slots": 0}, "memory_slots must be an integer >= 1"),
    ({"attention_temperature": 0.0}, "attention_temperature must be > 0"),
    ({"modulate_pattern": "nothing-here"}, "modulate_pattern 'nothing-here' matches no convolution"),
])
def test_refusals_are_one_line_and_name_the_option(kwargs, message):
    with pytest.raises(ValueError) as err:
        fewseg.create_algorithm("task-attention", fewseg.create_model("seed-cnn", width=4), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- train, checkpoints, resume, evaluate ---------------------------------------------------------------
def tiny_run_config(path, *overrides):
    cfg = tiny_config(4, model={"name": "unet", "options": {"depth": 2, "width": 4}},
                      train={"iterations": 4, "meta_batch": 2, "checkpoint_every": 2, "val_every": 4},
                      eval=tiny_eval(2))
    cfg["algorithm"] = {"name": "task-attention", "inner_steps": 1, "inner_lr": 0.1,
                        "options": {"memory_slots": 4, "batch_attention": True}}
    return config_from_dict(cfg, [f"output={path}", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("task-attention")
    trainer = Trainer(tiny_run_config(path), progress=False)
    trainer.fit()
    return path, trainer


def test_save_load_reproduces_the_weights_and_the_adaptation_exactly(trained):
    path, trainer = trained
    _, algo, _ = load_algorithm(path / "checkpoints" / "last")
    assert isinstance(algo, type(trainer.algo)) and algo.memory_slots == 4 and algo.batch_attention
    for (k, a), b in zip(trainer.algo.state_dict().items(), algo.state_dict().values()):
        assert torch.equal(a, b), k
    assert float(algo.film_weight.detach().abs().max()) > 0  # the modulation network was trained
    ep = random_batch(T=1, S=2, Q=2, size=16).task(0)
    trainer.algo.eval()
    mine, loaded = trainer.algo.adapt(ep.support_x, ep.support_y), algo.adapt(ep.support_x, ep.support_y)
    assert all(torch.equal(mine.params[n], loaded.params[n]) for n in mine.params)
    assert torch.equal(mine.predict(ep.query_x), loaded.predict(ep.query_x))
    assert torch.equal(trainer.algo.attention(ep.support_x, ep.support_y), algo.attention(ep.support_x, ep.support_y))


def test_interrupt_then_resume_reaches_the_same_weights(trained, tmp_path, monkeypatch):
    _, straight = trained
    interrupted = Trainer(tiny_run_config(tmp_path), progress=False)
    ctrl_c_during(monkeypatch, interrupted.algo, 4)  # Ctrl-C in the middle of iteration 4
    with pytest.raises(TrainingError, match="interrupted at iteration 3"):
        interrupted.fit()
    resumed = resume_trainer(tmp_path, progress=False)
    assert resumed.iteration == 3
    resumed.fit()
    for (name, a), b in zip(straight.algo.state_dict().items(), resumed.algo.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_tiny_train_evaluates_to_a_finite_miou(trained):
    path, _ = trained
    record = evaluate_checkpoint(path, shots=[1], episodes=2, log=lambda *_: None)
    miou = record["results"]["1"]["task-attention"]["miou"]
    assert math.isfinite(miou) and 0 <= miou <= 1
