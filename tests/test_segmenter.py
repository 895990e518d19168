"""The user API: fewseg.load -> adapt -> predict on inputs of every kind; saved adapted models; channels."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from userpath import labelled, tiny_run, write_images, write_support

import fewseg
from fewseg.errors import CheckpointError, DataError


def mixed_support(tmp_path):
    """Five support images, each in another form and size, with masks in other encodings."""
    rng = np.random.default_rng(0)
    pairs = [labelled(rng, 30 + 3 * i, 40 - 2 * i, shift=i) for i in range(5)]
    (img0, m0), (img1, m1), (img2, m2), (img3, m3), (img4, m4) = pairs
    Image.fromarray(img0).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(m0).save(tmp_path / "a.png")                                   # path + 0/255 file
    pal = Image.fromarray((m1 > 0).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)                                # palette mask
    images = [tmp_path / "a.jpg", Image.fromarray(img1),
              img2.mean(axis=2).astype(np.uint8),                                   # HxW grey uint8
              img3.astype(np.float32) / 255,                                        # HxWx3 float in [0,1]
              torch.from_numpy(img4).permute(2, 0, 1).float() / 255]                # CxHxW tensor
    masks = [str(tmp_path / "a.png"), pal, m2 > 0,                                  # bool array
             (m3 > 0).astype(np.uint8),                                             # 0/1 array
             torch.from_numpy(m4 > 0).float()]                                      # float tensor
    return images, masks


def test_adapt_and_predict_on_every_input_kind_at_each_original_size(seg, tmp_path):
    images, masks = mixed_support(tmp_path)
    adapted = seg.adapt(images, masks)
    assert adapted.info["shots"] == 5 and adapted.info["steps"] == seg.default_steps
    preds = adapted.predict(images)
    assert [p.mask.shape for p in preds] == [(30, 40), (33, 38), (36, 36), (39, 34), (42, 32)]
    for p in preds:
        assert p.probabilities.dtype == np.float32 and p.mask.dtype == bool
        assert 0.0 <= p.probabilities.min() <= p.probabilities.max() <= 1.0
        assert 0.5 <= p.confidence <= 1.0 and 0.0 <= p.foreground_fraction <= 1.0
    one = adapted.predict(images[3])                                # one image in, one Prediction out
    assert isinstance(one, fewseg.Prediction)
    np.testing.assert_allclose(one.probabilities, preds[3].probabilities, atol=1e-6)
    strict = adapted.predict(images[3], threshold=0.99)
    assert strict.mask.sum() <= one.mask.sum()


def test_the_same_photo_in_every_form_gives_the_same_prediction(seg, tmp_path):
    rng = np.random.default_rng(3)
    img, mask = labelled(rng, 27, 35)
    Image.fromarray(img).save(tmp_path / "p.png")
    adapted = seg.adapt([tmp_path / "p.png"], [mask])
    forms = [tmp_path / "p.png", Image.open(tmp_path / "p.png"), img, torch.from_numpy(img).permute(2, 0, 1)]
    ref = adapted.predict(forms[0]).probabilities
    for form in forms[1:]:                                              # 8-bit forms: the training resize exactly
        np.testing.assert_array_equal(adapted.predict(form).probabilities, ref)
    floats = adapted.predict(img.astype(np.float32) / 255).probabilities  # float: resized unrounded
    np.testing.assert_allclose(floats, ref, atol=1e-2)


def test_float_images_in_0_255_are_refused_not_saturated(seg):
    rng = np.random.default_rng(0)
    img, mask = labelled(rng, 24, 24)
    with pytest.raises(DataError, match=r"values up to 2\d\d.*\[0, 1\]"):
        seg.adapt([img.astype(np.float32)], [mask])
    adapted = seg.adapt([img], [mask])
    with pytest.raises(DataError, match="float images must lie in"):
        adapted.predict(torch.from_numpy(img).permute(2, 0, 1).float())
    algo = seg.algorithm                                              # the tensor API refuses them too
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    with pytest.raises(DataError, match="support_x holds values up to"):
        algo.adapt(x, torch.ones(1, 1, 24, 24))


def test_bad_support_sets_fail_in_one_line(seg):
    img, mask = labelled(np.random.default_rng(0), 20, 20)
    for images, masks, message in [([img], [], "1 support images but 0 masks"),
                                   ([], [], "at least one support image"),
                                   ([img], [np.zeros((20, 20), np.uint8)],
                                    r"no support mask holds foreground \(support mask 0\)"),
                                   ([img], [mask[:10]], "is 20x10 but support image 0 is 20x20"),
                                   (["nowhere.jpg"], [mask], "nowhere.jpg does not exist"),
                                   ([{"not": "an image"}], [mask], "must be a file path, PIL image")]:
        with pytest.raises(DataError, match=message) as info:
            seg.adapt(images, masks)
        assert "\n" not in str(info.value)


def test_more_than_ten_support_images_warn(seg):
    rng = np.random.default_rng(0)
    pairs = [labelled(rng, 16, 16) for _ in range(11)]
    with pytest.warns(UserWarning, match="11 support images: fewseg models are meta-trained on 1-10"):
        seg.adapt([p[0] for p in pairs], [p[1] for p in pairs], steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg.adapt([p[0] for p in pairs[:10]], [p[1] for p in pairs[:10]], steps=1)


def test_saved_adapted_model_predicts_the_same_and_holds_no_pickle(seg, tmp_path):
    images, masks = mixed_support(tmp_path)
    adapted = seg.adapt(images[:3], masks[:3], steps=3)
    path = adapted.save(tmp_path / "cls")
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "weights.safetensors"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["kind"] == "adapted" and meta["format"] == 1 and meta["adaptation"]["steps"] == 3
    assert meta["preprocessing"]["image_size"] == 24 and meta["preprocessing"]["channels"] == 3
    assert meta["model"] == {"name": "unet", "options": {"depth": 2, "width": 4}} and "fewseg" in meta["versions"]
    again = fewseg.load_adapted(path)
    for a, b in zip(adapted.predict(images), again.predict(images)):
        assert np.array_equal(a.probabilities, b.probabilities)
    assert again.threshold == adapted.threshold and again.info["shots"] == 3


def test_loading_an_adapted_model_checks_kind_format_and_tensors(run, seg, tmp_path):
    img, mask = labelled(np.random.default_rng(0), 24, 24)
    path = seg.adapt([img], [mask], steps=1).save(tmp_path / "cls")
    with pytest.raises(CheckpointError, match="is not an adapted model .*adapt it first"):
        fewseg.load_adapted(run / "checkpoints" / "last")
    with pytest.raises(CheckpointError, match="no adapted model at"):
        fewseg.load_adapted(tmp_path / "missing")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(CheckpointError, match="format 99 .* upgrade fewseg"):
        fewseg.load_adapted(path)
    (path / "meta.json").write_text(json.dumps({**meta, "model": {"name": "unet", "options": {"depth": 2,
                                                                                               "width": 8}}}))
    with pytest.raises(CheckpointError, match="does not fit network 'unet'.*wrong shape"):
        fewseg.load_adapted(path)
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "weights.safetensors").write_bytes(b"\x80\x04 pickle? no")
    with pytest.raises(CheckpointError, match="corrupt adapted-model weights"):
        fewseg.load_adapted(path)


def test_mamlpp_saves_the_final_steps_norm_weights_used_at_test_time(tmp_path):
    net = fewseg.create_model("unet", depth=2, width=4)
    algo = fewseg.create_algorithm("maml++", net, inner_steps=2, inner_lr=0.1).eval()
    with torch.no_grad():
        for s in algo.step_norms.values():
            s.add_(torch.randn_like(s))                                # every step's norms distinct
    from fewseg.preprocess import Preprocessing
    seg = fewseg.Segmenter(algo, Preprocessing(16), model_config={"name": "unet", "options": {"depth": 2, "width": 4}})
    img, mask = labelled(np.random.default_rng(0), 16, 16)
    adapted = seg.adapt([img], [mask], steps=3)
    name = algo.norm_names[0]
    last = algo.step_norms[name.replace(".", "__")][2]                 # step min(3, K=2)
    assert torch.equal(adapted.network.state_dict()[name], last)
    x, y, ign, _ = seg.prepare_support([img], [mask])
    reference = algo.adapt(x, y, steps=3, support_ignore=ign).predict(x)
    np.testing.assert_allclose(adapted.logits(x).sigmoid().numpy(), reference.numpy(), atol=1e-6)
    again = fewseg.load_adapted(adapted.save(tmp_path / "pp"))
    assert torch.equal(again.network.state_dict()[name], last)


def test_a_4000x3000_photo_runs_at_the_network_size_and_comes_back_full_size(seg):
    img, mask = labelled(np.random.default_rng(0), 30, 40)
    adapted = seg.adapt([img], [mask], steps=1)
    seen = []
    hook = adapted.network.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[1000:2000, 1000:3000] = (230, 200, 40)
    pred = adapted.predict(big)
    hook.remove()
    assert seen == [(1, 3, 24, 24)]                                     # the network never sees 4000x3000
    assert pred.mask.shape == (3000, 4000) and pred.probabilities.dtype == np.float32


def test_adapt_folder_is_the_api_path(run, seg, tmp_path):
    from fewseg.cli import main
    support = write_support(tmp_path / "support")
    (tmp_path / "images").mkdir()
    img, _ = labelled(np.random.default_rng(5), 33, 47)
    Image.fromarray(img).save(tmp_path / "images" / "x.png")
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--images", str(tmp_path / "images"),
                 "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    from fewseg.engine.session import find_support_pairs
    pairs = find_support_pairs(support)
    pred = seg.adapt([p for p, _ in pairs], [m for _, m in pairs]).predict(tmp_path / "images" / "x.png")
    written = np.asarray(Image.open(tmp_path / "out" / "masks" / "x.png")) > 0
    assert np.array_equal(written, pred.mask)


def test_adapt_folder_passes_tile_and_overlap_to_the_segmenter(run, tmp_path):
    from fewseg.engine.session import adapt_folder
    from fewseg.tiling import Tiling
    support = write_support(tmp_path / "support", n=2, size=(60, 80))
    quiet = {"steps": 1, "log": lambda *a: None}
    adapt_folder(run, support, save_adapted=tmp_path / "tiled", tile=32, overlap=8, **quiet)
    assert fewseg.load_adapted(tmp_path / "tiled").tiling == Tiling(32, 8)
    adapt_folder(run, support, save_adapted=tmp_path / "plain", **quiet)            # None: the default (none)
    assert fewseg.load_adapted(tmp_path / "plain").tiling is None
    adapt_folder(run, support, save_adapted=tmp_path / "off", tile=0, **quiet)       # 0: off
    assert fewseg.load_adapted(tmp_path / "off").tiling is None


# --- channels other than 3 ----------------------------------------------------------------------------
def test_grey_model_trains_evaluates_and_adapts_end_to_end(tmp_path, capsys):
    from fewseg.cli import main
    run = tiny_run(tmp_path / "grey", "model.options.in_channels=1")
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2", "--shots", "1",
                 "--baselines", "--output", str(tmp_path / "e.json")]) == 0            # every baseline too
    results = json.loads((tmp_path / "e.json").read_text())["results"]["1"]
    assert set(results) == set(fewseg.list_baselines()) | {"maml"}
    assert all(0.0 <= r["miou"] <= 1.0 for r in results.values())
    seg = fewseg.load(run)
    assert seg.preprocessing.channels == 1
    img, mask = labelled(np.random.default_rng(0), 26, 30)
    adapted = seg.adapt([img, img.mean(axis=2).astype(np.uint8)], [mask, mask])   # RGB and grey photos
    assert adapted.predict(img).mask.shape == (26, 30)
    support = write_support(tmp_path / "support", n=2)
    write_images(tmp_path / "images")
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--images", str(tmp_path / "images"),
                 "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["q0.png", "q1.png"]


def test_multispectral_model_takes_arrays_with_its_channel_count(tmp_path):
    seg = fewseg.Segmenter.untrained("unet", {"in_channels": 5, "depth": 2, "width": 4}, image_size=16, steps=2)
    rng = np.random.default_rng(0)
    bands = rng.random((20, 28, 5)).astype(np.float32)
    mask = np.zeros((20, 28), np.uint8)
    mask[5:15, 5:20] = 1
    np.save(tmp_path / "tile.npy", bands)
    adapted = seg.adapt([bands, tmp_path / "tile.npy"], [mask, mask])
    assert adapted.predict(tmp_path / "tile.npy").mask.shape == (20, 28)
    assert fewseg.load_adapted(adapted.save(tmp_path / "ms")).preprocessing.channels == 5
    with pytest.raises(DataError, match="has 3 channels but the model takes 5"):
        adapted.predict(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8))
    algo = seg.algorithm
    with pytest.raises(ValueError, match=r"support_x must have shape \[N,5,H,W\]"):
        algo.adapt(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16))
    batch = fewseg.MetaBatch(torch.rand(1, 2, 5, 16, 16), torch.ones(1, 2, 1, 16, 16),
                             torch.rand(1, 2, 5, 16, 16), torch.zeros(1, 2, 1, 16, 16))
    algo.train().meta_backward(batch, iteration=0)                      # meta-training takes 5 channels too
