"""examples/segment_photos.py runs as a user runs it, and the README's "Use a trained model" code is its code."""
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from test_examples import EXAMPLES, run_example
from userpath import tiny_run, write_images, write_support


def test_segment_photos_adapts_saves_reloads_and_writes_masks(tmp_path):
    run = tiny_run(tmp_path / "run")
    support = write_support(tmp_path / "support", n=2)
    images = write_images(tmp_path / "photos", sizes=((20, 30), (50, 41)))
    out = run_example([sys.executable, str(EXAMPLES / "segment_photos.py"), str(run), str(support),
                       str(tmp_path / "photos"), str(tmp_path / "out")], tmp_path)
    assert "adapted on 2 images (2 steps)" in out
    assert sorted(p.name for p in (tmp_path / "out" / "my_class").iterdir()) == ["meta.json", "weights.safetensors"]
    for path, (h, w) in zip(images, ((20, 30), (50, 41))):
        mask = np.asarray(Image.open(tmp_path / "out" / path.name))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert re.search(rf"{path.name}: {w}x{h}, foreground [0-9.]+%, confidence [0-9.]+", out)


def test_readme_use_a_trained_model_code_is_the_example_code():
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme[readme.index("### Use a trained model"):]
    start = section.index("```python") + len("```python")
    block = section[start:section.index("```", start)]
    example = {line.strip() for line in (EXAMPLES / "segment_photos.py").read_text().splitlines()}
    code = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(code) >= 5
    missing = [line for line in code if line not in example]
    assert not missing, f"README lines not in examples/segment_photos.py: {missing}"
    for command in ("fewseg adapt", "fewseg predict", "fewseg export", "fewseg serve"):
        assert command in section[:section.index("## Command line")]
    assert (Path(EXAMPLES.parent) / "docs" / "serve.png").is_file()
