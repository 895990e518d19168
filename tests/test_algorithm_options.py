"""Options are declared per algorithm and refused where unsupported; the outer iteration is an explicit input."""
import pytest
import torch
from conftest import random_batch

import fewseg
from fewseg.registry import ALGORITHMS

# one non-default value (with what it needs) for every option of the family
SAMPLES = {
    "inner_steps": {"inner_steps": 3}, "inner_lr": {"inner_lr": 0.05}, "first_order": {"first_order": True},
    "loss": {"loss": "dice"}, "strategy": {"strategy": "vmap"}, "task_chunk": {"strategy": "vmap", "task_chunk": 1},
    "eval_steps": {"eval_steps": 4}, "adapt_pattern": {"adapt_pattern": r"^2\."}, "proximal": {"proximal": 0.1},
    "batchnorm": {"batchnorm": "batch-stats"}, "task_weighting": {"task_weighting": "hard"},
    "weight_temperature": {"task_weighting": "hard", "weight_temperature": 0.5},
    "weight_grad": {"task_weighting": "hard", "weight_grad": True},
    "frequency_power": {"task_weighting": "class-frequency", "frequency_power": 0.5},
    "inner_checkpoint": {"inner_checkpoint": True},
    "checkpoint_images": {"inner_checkpoint": True, "checkpoint_images": 1},
    "per_tensor": {"per_tensor": True}, "multi_step_loss": {"multi_step_loss": False},
    "msl_iterations": {"msl_iterations": 5}, "learned_rates": {"learned_rates": False},
    "first_order_iterations": {"first_order_iterations": 3}, "per_step_norm": {"per_step_norm": False},
    "stochastic_pattern": {"stochastic_pattern": r"^2\."}, "kl_weight": {"kl_weight": 0.01},
    "init_log_sigma": {"init_log_sigma": -3.0}, "noise_seed": {"noise_seed": 3},
    "inner_optimizer": {"inner_optimizer": "adam"}, "cache_encoder": {"cache_encoder": False},
    "memory_slots": {"memory_slots": 3}, "batch_attention": {"batch_attention": True},
    "modulate_pattern": {"modulate_pattern": r"^2\."}, "attention_temperature": {"attention_temperature": 0.5},
    "modulation": {"modulation": False},
}
PAIRS = [(a, o) for a in ALGORITHMS.names() for o in sorted(SAMPLES)]


def test_every_declared_option_has_a_sample_value():
    declared = set().union(*(ALGORITHMS.get(a).OPTIONS for a in ALGORITHMS.names()))
    assert declared == set(SAMPLES)


# options that change how the result is computed, not the result (the test checks that too)
SAME_RESULT = {"strategy", "task_chunk", "inner_checkpoint", "checkpoint_images", "cache_encoder", "batchnorm"}
# MR-MAML draws one noise sample per pass: per task in the loop, per chunk under vmap (documented)
CHANGES_RESULT = {("mr-maml", "strategy"), ("mr-maml", "task_chunk")}
ITERATION = {"first_order": 60}   # maml++ is first order anyway before first_order_iterations (50)
MODEL = {"per_step_norm": ("unet", {"depth": 2, "width": 4})}  # seed-cnn has no norm layer


def _outcome(algorithm: str, kwargs: dict, option: str):
    """What an option can change: the parameters, the meta-gradient at iteration 10, an adaptation."""
    torch.manual_seed(0)
    batch = random_batch(T=2, S=2, Q=1, size=8, dtype=torch.float64)
    batch.class_ids = [0, 1]
    name, model_kwargs = MODEL.get(option, ("seed-cnn", {"width": 4}))
    model = fewseg.create_model(name, **model_kwargs).double()
    algo = fewseg.create_algorithm(algorithm, model, class_counts={0: 5, 1: 9},
                                   **{"inner_steps": 2, "inner_lr": 0.1, **kwargs}).double()
    logs = algo.meta_backward(batch, iteration=ITERATION.get(option, 10))
    assert torch.isfinite(torch.tensor(logs["loss"]))
    ep = batch.task(0)
    probs = algo.eval().adapt(ep.support_x, ep.support_y).predict(ep.query_x)
    # every meta-parameter's gradient: task-attention starts at MAML's (identity modulation), so its attention
    # options first show in the gradient of the modulation network, not of the model
    return [(n, p.shape) for n, p in algo.named_parameters()], [p.grad for p in algo.parameters()], probs


def _same_training(a, b) -> bool:
    return a[0] == b[0] and all(
        (x is None and y is None) or (x is not None and y is not None and torch.allclose(x, y, atol=1e-10))
        for x, y in zip(a[1], b[1]))


def _same_adaptation(a, b) -> bool:
    return torch.allclose(a[2], b[2], atol=1e-10)


TEST_TIME_ONLY = {"eval_steps"}  # every other honoured option must change meta-training itself


@pytest.mark.parametrize("algorithm,option", PAIRS)
def test_every_algorithm_option_pair_is_honoured_or_refused_in_one_line(algorithm, option):
    cls = ALGORITHMS.get(algorithm)
    sample = SAMPLES[option]
    accepted = all(k in cls.OPTIONS or (k in cls.FIXED and cls.FIXED[k] == v) for k, v in sample.items())
    if not accepted:
        refused = next(k for k, v in sample.items() if k not in cls.OPTIONS and cls.FIXED.get(k) != v)
        with pytest.raises(ValueError) as err:
            fewseg.create_algorithm(algorithm, fewseg.create_model("seed-cnn", width=4), **sample)
        message = str(err.value)
        assert "\n" not in message and refused in message and algorithm in message
        return
    with_option = _outcome(algorithm, sample, option)
    if option not in cls.OPTIONS:  # a fixed value the algorithm always uses: nothing to compare
        return
    without = _outcome(algorithm, {k: v for k, v in sample.items() if k != option}, option)
    if option in SAME_RESULT and (algorithm, option) not in CHANGES_RESULT:
        assert _same_training(with_option, without) and _same_adaptation(with_option, without), \
            f"{option} changed the result of {algorithm}"
    elif option in TEST_TIME_ONLY:
        assert not _same_adaptation(with_option, without), f"{option} had no effect on {algorithm}'s adaptation"
    else:
        assert not _same_training(with_option, without), f"{option} had no effect on {algorithm}'s meta-training"


def test_an_unsupported_option_at_its_default_is_harmless_and_a_fixed_value_is_accepted():
    model = fewseg.create_model("seed-cnn", width=4)
    fewseg.create_algorithm("reptile", model, proximal=0.0, strategy="loop", first_order=True)
    assert fewseg.create_algorithm("fomaml", model, first_order=True).first_order
    with pytest.raises(ValueError, match=r"strategy='vmap' is not supported .* \(reptile always uses strategy='loop'\)"):
        fewseg.create_algorithm("reptile", model, strategy="vmap")


def test_weighting_sub_options_need_their_weighting():
    model = fewseg.create_model("seed-cnn", width=4)
    with pytest.raises(ValueError, match="weight_temperature applies only to task_weighting='hard'"):
        fewseg.create_algorithm("maml", model, weight_temperature=0.5)
    with pytest.raises(ValueError, match="frequency_power applies only to task_weighting='class-frequency'"):
        fewseg.create_algorithm("maml", model, task_weighting="hard", frequency_power=2.0)


def test_reptile_outer_loss_applies_the_task_weights_its_meta_backward_applies():
    batch = random_batch(T=3, dtype=torch.float64)
    batch.query_y[2] = 1.0
    grads = {}
    for how in ("meta_backward", "outer_loss"):
        torch.manual_seed(0)
        model = fewseg.create_model("seed-cnn", width=4).double()
        algo = fewseg.create_algorithm("reptile", model, inner_steps=2, inner_lr=0.3, task_weighting="hard",
                                       weight_temperature=0.01)
        if how == "meta_backward":
            logs = algo.meta_backward(batch, iteration=0)
            assert max(logs["task_weights"]) > 0.5  # not uniform
        else:
            algo.outer_loss(batch, iteration=0).backward()
        grads[how] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["meta_backward"], grads["outer_loss"]):
        assert torch.allclose(a, b, atol=1e-12)


def test_reptile_with_adam_adapts_with_adam_at_test_time():
    torch.manual_seed(1)
    model = fewseg.create_model("seed-cnn", width=4)
    algo = fewseg.create_algorithm("reptile", model, inner_steps=3, inner_lr=0.01, inner_optimizer="adam")
    ep = random_batch(T=1, S=2, Q=2, size=8).task(0)
    adapted = algo.adapt(ep.support_x, ep.support_y, steps=3)
    phi = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    opt = torch.optim.Adam(phi.values(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        algo.loss_fn(torch.func.functional_call(model, phi, (ep.support_x,)), ep.support_y, None).backward()
        opt.step()
    for n, p in phi.items():
        assert torch.allclose(adapted.params[n], p.detach(), atol=1e-7), n


# --- the outer iteration, through the public API alone --------------------------------------------------
def _train(name: str, iterations: list[int], **options) -> list[list[torch.Tensor]]:
    """Meta-gradients at the given outer iterations from one fixed start, as a user of the README would."""
    batch = random_batch(T=2, S=2, Q=2, size=8, dtype=torch.float64)
    out = []
    for it in iterations:
        torch.manual_seed(0)
        algo = fewseg.create_algorithm(name, fewseg.create_model("seed-cnn", width=4).double(), inner_steps=2,
                                       inner_lr=0.3, **options).double()
        algo.meta_backward(batch, iteration=it)
        out.append([p.grad.clone() for p in algo.parameters() if p.grad is not None])
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.allclose(x, y, atol=1e-12) for x, y in zip(a, b))


def test_mamlpp_anneals_with_the_iteration_it_is_given():
    # derivative-order annealing: first order before iteration 2, second order from 2 on
    g0, g1, g2, g3 = _train("maml++", [0, 1, 2, 3], first_order_iterations=2, multi_step_loss=False)
    assert _same(g0, g1) and _same(g2, g3) and not _same(g1, g2)
    # multi-step loss weights move every iteration until msl_iterations, then stay
    m0, m1, m5, m6 = _train("maml++", [0, 1, 5, 6], first_order_iterations=0, msl_iterations=4)
    assert not _same(m0, m1) and not _same(m1, m5) and _same(m5, m6)
    # and a training loop through the public API reaches the second-order phase
    model = fewseg.create_model("seed-cnn", width=4)
    algo = fewseg.create_algorithm("maml++", model, inner_steps=1, first_order_iterations=2)
    assert [algo.use_second_order(i) for i in range(4)] == [False, False, True, True]


def test_mrmaml_draws_new_noise_every_iteration_and_the_same_noise_for_the_same_iteration():
    a0, a1, b0 = _train("mr-maml", [0, 1, 0], init_log_sigma=-1.0)
    assert _same(a0, b0) and not _same(a0, a1)


def test_meta_backward_needs_the_iteration():
    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1)
    with pytest.raises(TypeError, match="iteration"):
        algo.meta_backward(random_batch(T=1, size=8))


def test_test_time_adaptation_keeps_only_the_current_weights():
    """Memory of ``adapt`` is flat in the step count: earlier steps' weights are freed."""
    import gc
    import weakref

    torch.manual_seed(0)
    model = fewseg.create_model("seed-cnn", width=4)
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.1).eval()
    seen, alive = [], []
    forward = algo.params_and_forward()[1]

    def spying(params, x):  # during adaptation: how many earlier steps' weights are still alive?
        gc.collect()
        alive.append(sum(r() is not None for r in seen))
        seen.append(weakref.ref(params["2.weight"]))
        return forward(params, x)

    algo.params_and_forward = lambda: (dict(model.named_parameters()), spying)
    ep = random_batch(T=1, S=2, Q=1, size=8).task(0)
    adapted = algo.adapt(ep.support_x, ep.support_y, steps=30)
    assert len(seen) == 30 and max(alive) <= 2, alive   # theta and the previous step's weights, not all steps
    reference = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.1).eval()
    assert torch.equal(adapted.params["2.weight"],
                       reference.adapt(ep.support_x, ep.support_y, steps=30).params["2.weight"])
