"""The examples in examples/ run as a user would run them (a subprocess in a fresh folder, one thread)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(args: list[str], cwd: Path, timeout: int = 300) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # this venv's `fewseg`
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_quickstart_api_trains_adapts_and_scores(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "quickstart_api.py")], tmp_path)
    losses = [float(v) for v in re.findall(r"iteration \d+: meta-loss ([0-9.]+)", out)]
    assert len(losses) == 5 and all(np.isfinite(losses)) and all(v > 0 for v in losses)
    shape = re.search(r"shape \((\d+), (\d+), (\d+), (\d+)\), range \[([0-9.]+), ([0-9.]+)\]", out)
    assert shape is not None, out
    assert tuple(int(v) for v in shape.groups()[:4]) == (2, 1, 32, 32)
    lo, hi = float(shape.group(5)), float(shape.group(6))
    assert 0.0 <= lo <= hi <= 1.0
    scores = re.search(r"mIoU ([0-9.]+)\s+FB-IoU ([0-9.]+)\s+episodes (\d+)", out)
    assert scores is not None, out
    miou, fb_iou, n = float(scores.group(1)), float(scores.group(2)), int(scores.group(3))
    assert 0.0 <= miou <= 1.0 and 0.0 <= fb_iou <= 1.0 and n == 6


def test_adapt_folder_writes_binary_masks_at_each_image_size(tmp_path):
    work = tmp_path / "work"
    out = run_example(["bash", str(EXAMPLES / "adapt_folder.sh"), str(work)], tmp_path)
    assert "adapted on 2 support images" in out
    run = work / "run"
    assert (run / "checkpoints" / "last" / "weights.safetensors").is_file()
    assert (run / "log.jsonl").read_text().count("\n") == 2
    support = sorted(p.name for p in (work / "support").iterdir())
    assert support == ["0.jpg", "0.png", "1.jpg", "1.png"]
    images = sorted((work / "images").glob("*.png"))
    assert [p.stem for p in images] == ["2", "3", "4"]
    for image in images:
        mask_path, overlay_path = work / "out" / "masks" / image.name, work / "out" / "overlays" / image.name
        assert mask_path.is_file() and overlay_path.is_file()
        mask = Image.open(mask_path)
        assert mask.mode == "L" and mask.size == Image.open(image).size == (48, 32)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        overlay = Image.open(overlay_path)
        assert overlay.mode == "RGB" and overlay.size == (48, 32)


def test_readme_python_quick_start_is_the_example_code():
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme[readme.index("### Python API"):]
    block = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    example = {line.rstrip() for line in (EXAMPLES / "quickstart_api.py").read_text().splitlines()}
    code = [line.rstrip() for line in block.splitlines() if line.strip()]
    assert len(code) >= 15
    missing = [line for line in code if line not in example]
    assert not missing, f"README lines not in examples/quickstart_api.py: {missing}"
