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


def test_extend_algorithm_registers_trains_evaluates_and_refuses_unknown_options(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "extend_algorithm.py")], tmp_path)
    assert "inner rates per step: 0.2, 0.1, 0.05" in out
    same = re.search(r"lr_decay=1 meta-loss ([0-9.]+), maml meta-loss ([0-9.]+)", out)
    assert same is not None and same.group(1) == same.group(2), out  # lr_decay=1 is MAML
    losses = [float(v) for v in re.findall(r"iteration \d+: meta-loss ([0-9.]+)", out)]
    assert len(losses) == 4 and all(np.isfinite(losses)) and all(v > 0 for v in losses)
    scores = re.search(r"mIoU ([0-9.]+)\s+FB-IoU ([0-9.]+)\s+episodes (\d+)", out)
    assert scores is not None and int(scores.group(3)) == 4 and 0 <= float(scores.group(1)) <= 1, out
    refused = [line for line in out.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 3, out
    assert "unknown option 'lr_decya' for algorithm 'maml-decay'" in refused[0] and "lr_decay" in refused[0]
    assert "lr_decay must be a number in (0, 1], got 2.0" in refused[1]
    assert "unknown option 'lr_decay' for algorithm 'maml'" in refused[2]


def test_extend_model_offers_the_contract_and_encodes_once_per_task(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "extend_model.py")], tmp_path)
    assert re.search(r"my-net: \d+ parameters, logits \(2, 1, 24, 24\)", out), out
    cached = re.search(r"maml @head: encoder passes per meta-step (\d+) \(cached\), (\d+) \(every step\); "
                       r"meta-gradients differ by ([0-9.e+-]+)", out)
    assert cached is not None, out
    assert (int(cached.group(1)), int(cached.group(2))) == (2 * 2, 2 * (3 + 1))  # T=2 tasks, K=3 steps
    assert float(cached.group(3)) < 1e-5
    assert "maml @stage1|@decoder|@head: 10 tensors adapt, encoder cached: False" in out
    assert "anil adapts head.weight, head.bias; features once per task: True; encoder passes per meta-step 4" in out
    trained = re.findall(r"(maml @head|anil): meta-loss ([0-9.]+), mIoU ([0-9.]+) on 4 episodes", out)
    assert [t[0] for t in trained] == ["maml @head", "anil"], out
    assert all(np.isfinite(float(t[1])) and 0 <= float(t[2]) <= 1 for t in trained)
    assert ("refused: adapt_pattern '@body': unknown parameter group @body; this model's groups: @encoder, "
            "@stage0, @stage1, @decoder, @head") in out


def test_extend_dataset_lists_records_samples_episodes_and_trains(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "extend_dataset.py")], tmp_path)
    listed = re.search(r"(\d+) train records over classes \{1: 'square', 2: 'disc', 3: 'cross', 4: 'ring'\}; "
                       r"first: key '(\d+)', class (\d), files (\d+)\.png \+ (\d+)\.npy", out)
    assert listed is not None and int(listed.group(1)) > 0, out
    assert listed.group(2) == listed.group(4) == listed.group(5)
    episode = re.search(r"episode of class (\d): support \(2, 3, 24, 24\), query \(2, 3, 24, 24\), "
                        r"ignored pixels (\d+)", out)
    assert episode is not None and 1 <= int(episode.group(1)) <= 4 and int(episode.group(2)) > 0, out
    losses = [float(v) for v in re.findall(r"iteration \d+: meta-loss ([0-9.]+)", out)]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(v > 0 for v in losses)
    assert re.search(r"trainer: 2 iterations on npy-labelmaps, val classes \{'5': 'bar'\}, best val mIoU [0-9.]+",
                     out), out
    assert "refused: 1 class(es) of npy-labelmaps have fewer than shots+queries=40 usable images: 'diamond'" in out
    assert list(tmp_path.iterdir()) == []  # everything went to the example's own temporary folder
