"""Public API: registries, shapes, and clear errors for bad arguments."""
import pytest
import torch
from conftest import random_batch

import fewseg


def test_registries_list_the_core_components():
    assert {"seed-cnn", "unet"} <= set(fewseg.list_models())
    assert {"maml", "fomaml"} <= set(fewseg.list_algorithms())
    assert "synthetic" in fewseg.list_datasets()


@pytest.mark.parametrize("name", ["seed-cnn", "unet"])
def test_models_map_images_to_one_logit_channel(name):
    model = fewseg.create_model(name)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_seed_cnn_is_exactly_the_reference_network():
    model = fewseg.create_model("seed-cnn")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 1, (3, 3), (1, 1))]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2


def test_unet_has_groupnorm_and_no_batchnorm():
    model = fewseg.create_model("unet", depth=3, width=8)
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.GroupNorm in kinds and torch.nn.BatchNorm2d not in kinds


@pytest.mark.parametrize("kind,name", [("model", "nope"), ("algorithm", "nope"), ("dataset", "nope")])
def test_unknown_names_give_one_clear_error(kind, name):
    create = {"model": lambda: fewseg.create_model(name),
              "algorithm": lambda: fewseg.create_algorithm(name, fewseg.create_model("seed-cnn")),
              "dataset": lambda: fewseg.create_dataset(name)}[kind]
    with pytest.raises(KeyError, match=f"unknown {kind} 'nope'"):
        create()


def test_metabatch_rejects_wrong_shapes_and_values():
    b = random_batch(T=2, S=3, Q=2, size=8)
    with pytest.raises(ValueError, match="support_x must have shape"):
        fewseg.MetaBatch(b.support_x[0], b.support_y, b.query_x, b.query_y)
    with pytest.raises(ValueError, match="query_y must have shape"):
        fewseg.MetaBatch(b.support_x, b.support_y, b.query_x, b.query_y[:, :1])
    with pytest.raises(ValueError, match="support_y must hold binary masks"):
        fewseg.MetaBatch(b.support_x, b.support_y * 255, b.query_x, b.query_y)
    with pytest.raises(TypeError, match="query_x must be a floating-point"):
        fewseg.MetaBatch(b.support_x, b.support_y, (b.query_x * 255).to(torch.uint8), b.query_y)


def test_adapt_rejects_bad_arguments():
    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4))
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="support_y must have shape"):
        algo.adapt(x, torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="support_x must have shape"):
        algo.adapt(x[0], torch.ones(1, 8, 8))


def test_bad_algorithm_arguments():
    model = fewseg.create_model("seed-cnn", width=4)
    with pytest.raises(ValueError, match="inner_lr"):
        fewseg.create_algorithm("maml", model, inner_lr=0)
    with pytest.raises(ValueError, match="strategy"):
        fewseg.create_algorithm("maml", model, strategy="fast")
    with pytest.raises(ValueError, match="unknown option 'inner_stpes' for algorithm 'maml'; its options: .*inner_steps"):
        fewseg.create_algorithm("maml", model, inner_stpes=3)


def test_batchnorm_needs_an_explicit_policy():
    def bn_model():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                   torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))

    with pytest.raises(ValueError, match="BatchNorm layer '1'"):
        fewseg.create_algorithm("maml", bn_model())
    model = bn_model()
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, batchnorm="batch-stats")
    assert model[1].running_mean is None  # no running statistics to leak
    batch = random_batch(T=2, S=2, Q=2, size=8)
    for strategy in ("loop", "vmap"):
        algo = fewseg.create_algorithm("maml", model, inner_steps=1, batchnorm="batch-stats", strategy=strategy)
        loss = algo.outer_loss(batch, iteration=0)
        assert torch.isfinite(loss)
    assert model[1].running_mean is None and model[1].running_var is None  # still none after training
