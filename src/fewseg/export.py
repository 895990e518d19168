"""Export an adapted model for use without fewseg: ONNX (onnxruntime, other runtimes) or TorchScript.

The exported graph is the adapted network followed by a sigmoid: input ``images`` float32 ``[N,C,S,S]`` in
[0, 1] (N dynamic; C and S fixed: the model's channels and image size), outputs ``logits`` and
``probabilities`` ``[N,1,S,S]``. Resizing a photo to S x S (and the masks back) stays outside the graph;
``FILE.json`` beside the export records how (image size, resize mode, channels, pixel range, threshold).

ONNX uses torch's default exporter (``torch.onnx.export(dynamo=True)``, based on ``torch.export``; it needs
``onnxscript``), the maintained path since torch 2.9 (the TorchScript-based one is deprecated). After writing,
the file is run with onnxruntime where installed and compared with PyTorch (max difference <= 1e-4).
``pip install "fewseg[export]"`` brings onnx, onnxscript and onnxruntime.

Example:
    >>> import tempfile, torch, fewseg
    >>> seg = fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1)
    >>> adapted = seg.adapt([torch.rand(3, 16, 16)], [torch.ones(16, 16)])
    >>> path = export(adapted, tempfile.mkdtemp() + "/cls.pt", "torchscript")
    >>> net = torch.jit.load(str(path))
    >>> [tuple(t.shape) for t in net(torch.rand(5, 3, 16, 16))]           # any batch size
    [(5, 1, 16, 16), (5, 1, 16, 16)]
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from fewseg.errors import FewsegError

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


class ExportedSegmenter(nn.Module):
    """images [N,C,S,S] in [0,1] -> (logits, probabilities) [N,1,S,S]."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(images)
        return logits, torch.sigmoid(logits)


def example_input(adapted, batch: int = 2) -> torch.Tensor:
    p = adapted.preprocessing
    return torch.rand(batch, p.channels, p.image_size, p.image_size, generator=torch.Generator().manual_seed(0))


def export(adapted, output: str | Path, fmt: str, batch: int = 2, check: bool = True) -> Path:
    """Write ``adapted`` (an :class:`~fewseg.segmenter.AdaptedSegmenter`) to ``output`` as ``fmt`` (onnx or
    torchscript) and its preprocessing to ``output.json``; returns ``output``."""
    if fmt not in FORMATS:
        raise FewsegError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module = ExportedSegmenter(adapted.network.cpu().float()).eval()
    x = example_input(adapted, batch)
    if fmt == "onnx":
        _export_onnx(module, x, output)
        if check:
            check_onnx(module, output, x)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning on shape checks: shapes are fixed but the batch
            traced = torch.jit.trace(module, (x,))
        traced.save(str(output))
    sidecar = {"format": fmt, "inputs": {"images": ["N", adapted.preprocessing.channels,
                                                    adapted.preprocessing.image_size, adapted.preprocessing.image_size]},
               "outputs": ["logits", "probabilities"], "preprocessing": adapted.preprocessing.to_dict(),
               "predict_resize": adapted.preprocessing.predict_mode, "threshold": adapted.threshold,
               "model": adapted.model_config, "adaptation": adapted.info}
    Path(f"{output}.json").write_text(json.dumps(sidecar, indent=1))
    return output


def _export_onnx(module: nn.Module, x: torch.Tensor, output: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise FewsegError('ONNX export needs onnx and onnxscript: pip install "fewseg[export]"') from None
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(output), input_names=["images"],
                              output_names=["logits", "probabilities"],
                              dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                              dynamo=True, external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)


def check_onnx(module: nn.Module, path: Path, x: torch.Tensor) -> float | None:
    """Run ``path`` with onnxruntime on ``x`` and on a batch of another size; the largest difference from
    PyTorch (None when onnxruntime is not installed). Raises FewsegError above :data:`TOLERANCE`."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for images in (x, torch.cat([x, x[:1]])):
        with torch.no_grad():
            expected = module(images)
        got = session.run(["logits", "probabilities"], {"images": images.numpy()})
        worst = max(worst, *(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected)))
    if worst > TOLERANCE:
        raise FewsegError(f"the ONNX export {path} differs from PyTorch by {worst:.2e} (> {TOLERANCE})")
    return worst
