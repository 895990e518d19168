"""Inputs checked before any work (issue 28): every argument of ``fewseg adapt`` / ``fewseg predict`` is checked
before a model is loaded or adapted; ``--images`` takes a file, several files, a glob and a folder (``--recursive``
for subfolders), and says what it skipped and why. Also the other user errors that must be one line and exit 2:
``serve --port 99999``, ``train --resume RUN --config X``, and ``threshold=abc`` in the web API (HTTP 400)."""
import io
import json
import os

import numpy as np
import pytest
from conftest import one_line_exit_2, run_cli
from PIL import Image
from userpath import labelled, write_images, write_support

import fewseg
from fewseg.cli import main
from fewseg.errors import DataError, FewsegError
from fewseg.image_files import collect_images
from fewseg.inputs import output_names


@pytest.fixture(scope="module")
def saved(seg, tmp_path_factory):
    """An adapted model of the shared tiny run (conftest ``seg``), for predict."""
    tmp = tmp_path_factory.mktemp("adapted")
    support = write_support(tmp / "support", n=2)
    return seg.adapt(sorted(support.glob("*.jpg")), sorted(support.glob("*.png")), steps=1).save(tmp / "cls")


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a model is loaded, adapted or applied."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or adapted before the arguments were checked")

    from fewseg.engine import session
    monkeypatch.setattr(session, "load_segmenter", refuse)
    monkeypatch.setattr(session, "adapt_folder", refuse)
    monkeypatch.setattr(fewseg.Segmenter, "adapt", refuse)
    monkeypatch.setattr(fewseg.segmenter, "load_adapted", refuse)


def a_tree(root):
    """images/ with 2 images, a text file, a broken link, a link loop and sub/ (an image, sub/deeper/ another,
    a link back up), the same name in two folders."""
    images = root / "images"
    write_images(images)                                       # q0.png, q1.png
    (images / "notes.txt").write_text("not an image")
    write_images(images / "sub", sizes=((22, 26),))            # sub/q0.png: the same name as images/q0.png
    write_images(images / "sub" / "deeper", sizes=((18, 18),), seed=3)
    os.symlink(images / "gone.png", images / "broken.png")
    os.symlink(images / "loop", images / "loop")
    os.symlink(images, images / "sub" / "up")
    return images


# --- argument checks run before any work -------------------------------------------------------------------
def test_bad_adapt_arguments_are_refused_before_any_work(run, tmp_path, capsys, no_work):
    support = write_support(tmp_path / "support", n=1)
    images = write_images(tmp_path / "images")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "photo.jpg").write_text("")
    base = ["adapt", "--checkpoint", run, "--support", support]
    cases = {
        "missing images": ([*base, "--images", tmp_path / "nowhere", "--output", tmp_path / "o"], "does not exist"),
        "missing image file": ([*base, "--images", tmp_path / "photo.jpg", "--output", tmp_path / "o"],
                               "does not exist"),
        "glob matching nothing": ([*base, "--images", str(tmp_path / "*.gif"), "--output", tmp_path / "o"],
                                  "no file or folder matches"),
        "no image at all": ([*base, "--images", tmp_path / "notes.txt", "--output", tmp_path / "o"],
                            "not an image"),
        "threshold above 1": ([*base, "--images", images[0], "--output", tmp_path / "o", "--threshold", "1.5"],
                              "threshold must lie strictly between 0 and 1"),
        "threshold nan": ([*base, "--images", images[0], "--output", tmp_path / "o", "--threshold", "nan"],
                          "threshold must lie strictly between 0 and 1"),
        "threshold text": ([*base, "--images", images[0], "--output", tmp_path / "o", "--threshold", "abc"],
                           "--threshold"),
        "missing masks folder": ([*base, "--images", images[0], "--output", tmp_path / "o", "--masks",
                                  tmp_path / "nowhere"], "masks folder"),
        "output is a file": ([*base, "--images", images[0], "--output", tmp_path / "a_file"], "is a file"),
        "images without output": ([*base, "--images", images[0]], "--images needs --output"),
        "nothing to do": (base, "nothing to do"),
        "missing support": (["adapt", "--checkpoint", run, "--support", tmp_path / "nowhere", "--save-adapted",
                             tmp_path / "cls"], "support folder"),
        "missing checkpoint": (["adapt", "--checkpoint", tmp_path / "nowhere", "--support", support,
                                "--save-adapted", tmp_path / "cls"], "no checkpoint found"),
        "save-adapted onto a file": ([*base, "--save-adapted", tmp_path / "a_file"], "is a file"),
        "save-adapted onto a full folder": ([*base, "--save-adapted", tmp_path / "full"], "holding other files"),
    }
    for name, (args, message) in cases.items():
        err = one_line_exit_2(*run_cli(args, capsys))
        assert message in err, (name, err)


def test_bad_predict_arguments_are_refused_before_any_work(saved, tmp_path, capsys, no_work):
    images = write_images(tmp_path / "images")
    base = ["predict", "--adapted", saved, "--output", tmp_path / "o"]
    cases = {"missing images": ([*base, "--images", tmp_path / "nowhere"], "images folder or file"),
             "threshold": ([*base, "--images", images[0], "--threshold", "0"], "strictly between 0 and 1"),
             "missing masks": ([*base, "--images", images[0], "--masks", tmp_path / "no"], "masks folder"),
             "missing model": (["predict", "--adapted", tmp_path / "no", "--images", images[0], "--output",
                                tmp_path / "o"], "no adapted model at")}
    for name, (args, message) in cases.items():
        err = one_line_exit_2(*run_cli(args, capsys))
        assert message in err, (name, err)


# --- a single file, several, a glob, a folder, recursive ------------------------------------------------------
def masks_written(out) -> list[str]:
    return sorted(p.name for p in (out / "masks").iterdir())


def test_adapt_segments_a_single_file(run, tmp_path, capsys):
    support = write_support(tmp_path / "support", n=2)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(labelled(np.random.default_rng(0), 30, 30)[0]).save(photo)
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--images", str(photo),
                 "--output", str(tmp_path / "out"), "--steps", "1", "--no-progress"]) == 0
    assert masks_written(tmp_path / "out") == ["photo.png"]


def test_predict_takes_several_files_a_glob_and_a_folder(saved, tmp_path, capsys):
    paths = write_images(tmp_path / "images", sizes=((20, 30), (21, 31), (22, 32)))
    Image.fromarray(labelled(np.random.default_rng(0), 20, 20)[0]).save(tmp_path / "images" / "x.jpg")
    cases = {"several": ([paths[0], paths[2]], ["q0.png", "q2.png"]),
             "glob": ([str(tmp_path / "images" / "q*.png")], ["q0.png", "q1.png", "q2.png"]),
             "glob and file": ([str(tmp_path / "images" / "*.jpg"), paths[1]], ["q1.png", "x.png"]),
             "folder": ([tmp_path / "images"], ["q0.png", "q1.png", "q2.png", "x.png"]),
             "the same file twice": ([paths[0], tmp_path / "images" / "." / "q0.png"], ["q0.png"])}
    for name, (images, expected) in cases.items():
        out = tmp_path / name
        assert main(["predict", "--adapted", str(saved), "--images", *map(str, images), "--output", str(out),
                     "--no-progress"]) == 0, name
        assert masks_written(out) == expected, name
        assert json.loads((out / "results.json").read_text())["n_images"] == len(expected)


def test_a_folder_reports_what_it_skipped_and_recursive_takes_subfolders(saved, tmp_path, capsys):
    images = a_tree(tmp_path)
    assert main(["predict", "--adapted", str(saved), "--images", str(images), "--output", str(tmp_path / "flat"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert masks_written(tmp_path / "flat") == ["q0.png", "q1.png"]
    warnings = [ln for ln in err.splitlines() if ln.startswith("fewseg: warning:")]
    assert f"fewseg: warning: skipped 1 subfolder (searched only with --recursive): {images / 'sub'}" in warnings
    assert f"fewseg: warning: skipped 1 entry (broken symbolic link): {images / 'broken.png'}" in warnings
    assert f"fewseg: warning: skipped 1 entry (symbolic link loop): {images / 'loop'}" in warnings
    assert any("that is not an image" in ln and "notes.txt" in ln for ln in warnings), warnings
    assert main(["predict", "--adapted", str(saved), "--images", str(images), "--recursive", "--output",
                 str(tmp_path / "deep"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "a link back to a folder already searched" in err and "subfolder" not in err
    # four images, two named q0.png: neither mask overwrites the other
    assert masks_written(tmp_path / "deep") == ["deeper__q0.png.png", "images__q0.png.png", "q1.png",
                                                 "sub__q0.png.png"]


def test_a_recursive_glob(saved, tmp_path):
    images = a_tree(tmp_path)
    found = collect_images(str(images / "**" / "q0.png"), recursive=True)
    assert found.paths == [images / "q0.png", images / "sub" / "deeper" / "q0.png", images / "sub" / "q0.png"]
    assert collect_images(str(images / "**" / "q0.png")).paths == [images / "sub" / "q0.png"]  # ** is * without it


def test_collect_images_refuses_a_named_file_it_cannot_read(tmp_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    with pytest.raises(DataError, match="cannot read .*broken.png: broken symbolic link"):
        collect_images(tmp_path / "broken.png")
    with pytest.raises(DataError, match="no images in .*broken symbolic link"):
        collect_images(tmp_path)


def test_output_names_stay_unique():
    from pathlib import Path
    paths = [Path("a/x/cat.png"), Path("b/x/cat.png"), Path("c/dog.jpg"), Path("c/dog.png"), Path("e.png")]
    names = output_names(paths)
    assert len(set(names)) == len(names) and names[-1] == "e.png" and "a__x__cat.png.png" in names


# --- other user errors: one line, exit 2 ----------------------------------------------------------------------
@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_serve_refuses_a_port_out_of_range(port, capsys, monkeypatch):
    from fewseg.webapp import server
    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("serve ran"))
    rc, err = run_cli(["serve", "--port", port], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--port" in err, err


def test_make_server_refuses_a_port_out_of_range():
    pytest.importorskip("flask")
    from fewseg.webapp.server import make_server
    seg = fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1)
    with pytest.raises(FewsegError, match="a port is 0-65535"):
        make_server(seg, port=99999)


def test_train_refuses_resume_with_config(tmp_path, capsys, monkeypatch):
    from fewseg.engine import trainer
    monkeypatch.setattr(trainer, "resume_trainer", lambda *a, **k: pytest.fail("resumed"))
    err = one_line_exit_2(*run_cli(["train", "--resume", tmp_path, "--config", "synthetic_maml"], capsys))
    assert "--config synthetic_maml would be ignored" in err


def test_the_web_api_refuses_a_threshold_that_is_not_a_number(monkeypatch):
    pytest.importorskip("flask")
    from fewseg.webapp.server import create_app
    seg = fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1)
    client = create_app(seg).test_client()
    rng = np.random.default_rng(0)
    img, mask = labelled(rng, 20, 20)

    def png(a) -> io.BytesIO:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        buf.seek(0)
        return buf

    def post(threshold):
        data = {"support_image": [(png(img), "s.png")], "support_mask": [(png(mask), "s_mask.png")],
                "query": [(png(img), "q.png")]}
        if threshold is not None:
            data["threshold"] = threshold
        return client.post("/api/adapt", data=data, content_type="multipart/form-data")

    assert post("0.4").status_code == 200 and post(None).status_code == 200
    monkeypatch.setattr(seg, "adapt", lambda *a, **k: pytest.fail("adapted before the threshold was checked"))
    for bad in ("abc", "1.5", "0", "nan", "-0.2"):
        r = post(bad)
        assert r.status_code == 400, (bad, r.get_json())
        assert r.get_json()["error"].startswith("threshold must be a number strictly between 0 and 1"), bad
