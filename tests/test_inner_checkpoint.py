"""Inner-loop checkpointing (``inner_checkpoint=True``): the same meta-gradient, one inner step's graph alive."""
import gc
import itertools
from functools import partial

import pytest
import torch
from conftest import random_batch
from test_meta_gradient import assert_close_rel, grads_of, unrolled_meta_grad

import fewseg


@pytest.mark.parametrize("model_name,kwargs", [("seed-cnn", {}), ("unet", {"depth": 3, "width": 8})])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("images", [0, 1, 2])  # whole support set, one image, pieces of 2 and 1 of S=3
def test_checkpointed_meta_gradient_matches_the_unrolled_reference(model_name, kwargs, first_order, images):
    torch.manual_seed(0)
    model = fewseg.create_model(model_name, **kwargs).double()
    batch = random_batch(T=3, S=3, Q=2, size=16, dtype=torch.float64, ignore=True)
    algo = fewseg.create_algorithm("maml", model, inner_steps=3, inner_lr=0.3, first_order=first_order,
                                   inner_checkpoint=True, checkpoint_images=images)
    ref_loss, ref_grads = unrolled_meta_grad(model, batch, steps=3, lr=0.3, first_order=first_order)
    logs = algo.meta_backward(batch, iteration=0)
    assert logs["loss"] == pytest.approx(float(ref_loss), rel=1e-10)
    assert_close_rel(grads_of(model), ref_grads, rtol=1e-9)


VARIANTS = [
    ("maml", {"proximal": 0.5}),                                   # anchor theta inside every inner loss
    ("meta-sgd", {}),                                              # learned per-parameter rates
    ("maml++", {"msl_iterations": 10}),                            # multi-step loss, per-step rates and norms
    ("mr-maml", {}),                                               # sampled shared block (same noise draw)
    ("maml", {"task_weighting": "hard"}),                          # per-task gradients, softmax weights
    ("maml", {"adapt_pattern": r"^head\."}),                       # shared body, adapted head
]


@pytest.mark.parametrize("images", [0, 1])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in VARIANTS])
def test_checkpointed_meta_gradient_equals_the_per_task_loop_for_every_variant(name, kwargs, images):
    batch = random_batch(T=3, S=2, Q=2, size=16, dtype=torch.float64, ignore=True)
    results = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        model = fewseg.create_model("unet", depth=2, width=6).double()
        algo = fewseg.create_algorithm(name, model, inner_steps=3, inner_lr=0.2, strategy="loop",
                                       inner_checkpoint=checkpoint, checkpoint_images=images if checkpoint else 0,
                                       **kwargs).double()
        with torch.no_grad():  # learned rates away from their common init, so a wrong step index shows
            for p in algo.parameters():
                if p is not None and not any(p is q for q in model.parameters()):
                    p.mul_(1 + 0.5 * torch.rand_like(p))
        logs = algo.meta_backward(batch, iteration=0)
        # None: a parameter the meta-step never uses (MAML++ replaces the model's norm weights by per-step ones)
        results.append((logs["loss"], [p.grad for p in algo.parameters()]))
    (loss, want), (got_loss, got) = results
    assert got_loss == pytest.approx(loss, rel=1e-10)
    assert [g is None for g in got] == [g is None for g in want]
    assert_close_rel([g for g in got if g is not None], [g for g in want if g is not None], rtol=1e-9)


@pytest.mark.parametrize("loss", ["balanced-bce", "dice", "focal", "bce+dice"])
def test_image_pieces_give_the_same_meta_gradient_for_every_loss(loss):
    """Each built-in loss sums per-image terms, so rebuilding a step image by image changes nothing."""
    assert_one_image_pieces_match_the_plain_loop(
        lambda model, **ckpt: fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.3, loss=loss,
                                                      strategy="loop", **ckpt),
        lambda: fewseg.create_model("unet", depth=2, width=6).double(), S=3, Q=2)


def assert_one_image_pieces_match_the_plain_loop(make_algo, make_model, S, Q):
    """make_algo(model, inner_checkpoint=..., checkpoint_images=...): same loss and meta-gradient both ways."""
    batch = random_batch(T=2, S=S, Q=Q, size=16, dtype=torch.float64, ignore=True)
    results = []
    for checkpoint, images in ((False, 0), (True, 1)):
        torch.manual_seed(0)
        model = make_model()
        logs = make_algo(model, inner_checkpoint=checkpoint, checkpoint_images=images).meta_backward(batch, iteration=0)
        results.append((logs["loss"], grads_of(model)))
    (loss_value, want), (got_loss, got) = results
    assert got_loss == pytest.approx(loss_value, rel=1e-10)
    assert_close_rel(got, want, rtol=1e-9)


def saved_tensors_during(step) -> tuple[int, int]:
    """(most tensors autograd held for backward at any one time during ``step()``, how many it still holds after).

    Each saved tensor is counted from when autograd saves it until the graph node holding it is freed. The count
    keeps a detached alias (so the graph is freed as it would be without the count) and a small handle that
    autograd holds in its place; the handle going away is the node freeing it.
    """
    held: dict[int, torch.Tensor] = {}
    peak = 0
    keys = itertools.count()

    class Handle:
        __slots__ = ("key",)

        def __init__(self, tensor: torch.Tensor):
            nonlocal peak
            self.key = next(keys)
            held[self.key] = tensor.detach()
            peak = max(peak, len(held))

        def __del__(self):
            held.pop(self.key, None)

    with torch.autograd.graph.saved_tensors_hooks(Handle, lambda handle: held[handle.key]):
        step()
    gc.collect()
    return peak, len(held)


def test_checkpointed_training_step_frees_each_inner_graph():
    """With inner_checkpoint one inner step's graph is alive at a time: the most tensors saved for backward at
    once does not grow with the inner steps (it does, step by step, when the loop is unrolled), and the meta-step
    leaves no graph behind."""
    batch = random_batch(T=2, S=2, Q=2, size=16)
    peaks = {}
    for checkpoint in (False, True):
        for steps in (2, 4):
            torch.manual_seed(0)
            model = fewseg.create_model("seed-cnn")
            algo = fewseg.create_algorithm("maml", model, inner_steps=steps, inner_lr=0.1, strategy="loop",
                                           inner_checkpoint=checkpoint)
            peaks[checkpoint, steps], left = saved_tensors_during(partial(algo.meta_backward, batch, iteration=0))
            assert left == 0, (checkpoint, steps, left)
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert peaks[False, 4] > peaks[False, 2], peaks  # the count sees the inner graphs the unrolled loop keeps
    assert peaks[True, 4] <= peaks[True, 2], peaks  # checkpointed: flat in the number of inner steps
    assert peaks[True, 4] < peaks[False, 4], peaks


@pytest.mark.parametrize("name,kwargs,message", [
    ("anil", {}, "option inner_checkpoint=True is not supported by algorithm 'anil'"),
    ("reptile", {}, "option inner_checkpoint=True is not supported by algorithm 'reptile'"),
    ("maml", {"strategy": "vmap"}, "use strategy 'loop' or 'auto'"),
])
def test_inner_checkpoint_refuses_what_it_cannot_checkpoint(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fewseg.create_algorithm(name, fewseg.create_model("seed-cnn"), inner_checkpoint=True, **kwargs)


@pytest.mark.parametrize("kwargs", [{"checkpoint_images": 2}, {"checkpoint_images": -1, "inner_checkpoint": True},
                                    {"checkpoint_images": "abc", "inner_checkpoint": True}])
def test_checkpoint_images_needs_inner_checkpoint_and_a_count(kwargs):
    with pytest.raises(ValueError, match="checkpoint_images must be an integer >= 0 and needs inner_checkpoint=True"):
        fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn"), **kwargs)


def test_image_pieces_build_graphs_of_one_piece_only():
    """checkpoint_images=1: every forward that records a graph sees one image; whole sets run without a graph."""
    torch.manual_seed(0)
    model = fewseg.create_model("seed-cnn")
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append((args[0].shape[0], torch.is_grad_enabled())))
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.1, inner_checkpoint=True,
                                   checkpoint_images=1)
    algo.meta_backward(random_batch(T=2, S=3, Q=4, size=16), iteration=0)
    assert {n for n, grad in seen if grad} == {1}
    assert {n for n, grad in seen if not grad} == {3, 4}  # the recorded logits of the support and query sets


class QueryWithPenalty(fewseg.algorithms.base.MetaAlgorithm):
    """A query loss with a term that does not go through the logits (it must count once, not once per piece)."""

    def query_loss(self, forward, trajectory, ep, iteration):
        last = trajectory[-1]
        return super().query_loss(forward, trajectory, ep, iteration) + 0.1 * sum((p ** 2).sum() for p in last.values())


def test_query_pieces_count_terms_without_logits_once():
    assert_one_image_pieces_match_the_plain_loop(
        lambda model, **ckpt: QueryWithPenalty(model, inner_steps=2, inner_lr=0.3, strategy="loop", **ckpt),
        lambda: fewseg.create_model("seed-cnn").double(), S=2, Q=3)


def test_image_pieces_refuse_batch_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    with pytest.raises(ValueError, match="checkpoint_images needs per-image logits"):
        fewseg.create_algorithm("maml", model, batchnorm="batch-stats", inner_checkpoint=True, checkpoint_images=1)
