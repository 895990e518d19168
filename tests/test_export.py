"""fewseg export: ONNX run by onnxruntime and TorchScript match PyTorch to 1e-4, with a dynamic batch."""
import json
import warnings

import numpy as np
import pytest
import torch
from userpath import labelled, tiny_run, write_support

import fewseg
from fewseg.cli import main


@pytest.fixture(scope="module")
def adapted_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    run = tiny_run(tmp / "run")
    support = write_support(tmp / "support", n=2)
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--save-adapted",
                 str(tmp / "cls")]) == 0
    return tmp / "cls"


def reference(adapted, x):
    with torch.no_grad():
        logits = adapted.network(x)
    return logits.numpy(), torch.sigmoid(logits).numpy()


def test_onnx_export_runs_in_onnxruntime_like_pytorch_for_any_batch(adapted_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="pip install 'fewseg[export]'")
    out = tmp_path / "cls.onnx"
    assert main(["export", "--adapted", str(adapted_dir), "--format", "onnx", "--output", str(out)]) == 0
    adapted = fewseg.load_adapted(adapted_dir)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 24, 24]
    g = torch.Generator().manual_seed(1)
    for n in (1, 3, 7):                                                  # the batch dimension is dynamic
        x = torch.rand(n, 3, 24, 24, generator=g)
        logits, probs = session.run(["logits", "probabilities"], {"images": x.numpy()})
        ref_logits, ref_probs = reference(adapted, x)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-4, rtol=0)
    sidecar = json.loads((tmp_path / "cls.onnx.json").read_text())
    assert sidecar["preprocessing"]["image_size"] == 24 and sidecar["threshold"] == adapted.threshold
    assert sidecar["inputs"]["images"] == ["N", 3, 24, 24] and sidecar["predict_resize"] == "stretch"


def test_onnx_of_a_real_photo_gives_the_masks_of_predict(adapted_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="pip install 'fewseg[export]'")
    from fewseg.export import export
    adapted = fewseg.load_adapted(adapted_dir)
    path = export(adapted, tmp_path / "m.onnx", "onnx")
    img, _ = labelled(np.random.default_rng(4), 37, 53)
    prep = adapted.preprocessing                                         # what the sidecar describes
    x = prep.image(img, prep.predict_mode)[None].numpy()
    _, probs = ort.InferenceSession(str(path)).run(None, {"images": x})
    full = torch.sigmoid(prep.to_original(torch.logit(torch.from_numpy(probs).double().clamp(1e-12, 1 - 1e-12))
                                          .float(), (37, 53))).numpy()
    np.testing.assert_allclose(full, adapted.predict(img).probabilities, atol=1e-4)


def test_torchscript_export_matches_pytorch_for_any_batch(adapted_dir, tmp_path):
    out = tmp_path / "cls.pt"
    assert main(["export", "--adapted", str(adapted_dir), "--format", "torchscript", "--output", str(out)]) == 0
    adapted = fewseg.load_adapted(adapted_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                # torch.jit.load, deprecated in 2.13
        net = torch.jit.load(str(out))
    for n in (1, 5):
        x = torch.rand(n, 3, 24, 24)
        logits, probs = net(x)
        ref_logits, ref_probs = reference(adapted, x)
        np.testing.assert_allclose(logits.detach().numpy(), ref_logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(probs.detach().numpy(), ref_probs, atol=1e-4, rtol=0)


def test_export_errors_are_one_line(adapted_dir, tmp_path, capsys):
    assert main(["export", "--adapted", str(tmp_path / "nothing"), "--format", "onnx",
                 "--output", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no adapted model at" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--adapted", str(adapted_dir), "--format", "tflite", "--output", "x"])
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
