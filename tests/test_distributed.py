"""Two ranks (torchrun, gloo, CPU) against one process: the same meta-gradients, weights and evaluation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_cases import CASES, build, episodes, meta_batch

from fewseg.engine.evaluator import MetaLearner, evaluate

HERE = Path(__file__).parent


def torchrun(args: list[str], tmp_path: Path, timeout: float = 240, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    launcher = [a for a in args if a.startswith("--max-restarts")]
    args = [a for a in args if a not in launcher]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *launcher,
           *args]
    return subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    proc = torchrun([str(HERE / "dist_worker.py"), str(tmp / "out.pt")], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "out.pt", weights_only=True)


def assert_close_rel(got, want, rtol=1e-6):
    g = torch.cat([t.flatten() for t in got])
    w = torch.cat([t.flatten() for t in want])
    assert float((g - w).abs().max() / w.abs().max().clamp_min(1e-30)) < rtol


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_give_the_meta_gradient_of_one_process(two_ranks, case):
    algo = build(case)
    logs = algo.meta_backward(meta_batch(), iteration=3)
    want = [p.grad if p.grad is not None else torch.zeros_like(p) for p in algo.parameters()]
    assert_close_rel(two_ranks[case]["grads"], want)
    assert two_ranks[case]["weights"] == pytest.approx(logs["task_weights"], rel=1e-12)
    assert two_ranks[case]["loss"] == pytest.approx(logs["loss"], rel=1e-12)


def test_two_ranks_give_the_evaluation_of_one_process(two_ranks):
    single = evaluate(MetaLearner(build("maml").eval()), episodes())
    dist = two_ranks["evaluate"]
    for key in ("miou", "fb_iou", "episode_iou_mean", "episode_iou_ci95", "n_episodes", "per_class"):
        assert dist[key] == single[key], key


# --- training under torchrun, end to end ------------------------------------------------------------------
def tiny(out: Path, *extra: str) -> list[str]:
    """The demo recipe, small; plain second-order MAML unless ``extra`` names another algorithm."""
    return ["--config", "synthetic_maml", "--no-progress", "algorithm.name=maml", "algorithm.first_order=false",
            "data.image_size=16", "model.options.depth=2", "model.options.width=4", "train.meta_batch=3",
            "train.shots=2", "train.queries=2",
            "train.iterations=3", "train.val_every=3", "train.val_episodes=3", "train.checkpoint_every=1",
            "train.schedule=constant", "algorithm.inner_steps=2", "algorithm.eval_steps=2", "eval.tune=false",
            f"output={out}", *extra]


ALGORITHM_RUNS = {
    "maml": [], "fomaml": ["algorithm.name=fomaml"],
    "reptile": ["algorithm.name=reptile", "train.outer_optimizer=sgd", "train.outer_lr=0.5"],
    "meta-sgd": ["algorithm.name=meta-sgd"],
    "maml++": ["algorithm.name=maml++", "algorithm.options={first_order_iterations: 1, msl_iterations: 2}"],
}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(run / "checkpoints" / "last" / "weights.safetensors"))


def one_process(out: Path, *extra: str) -> dict:
    from fewseg.cli import main
    torch.set_num_threads(1)
    assert main(["train", *tiny(out, *extra)]) == 0
    return weights(out)


def assert_same_weights(a: dict, b: dict, rtol: float = 1e-6) -> None:
    """Equal to ``rtol`` relative to the largest weight (float32 sums in another order differ in the last bits)."""
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in b.values())
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst / scale < rtol, worst / scale


@pytest.mark.parametrize("algorithm", list(ALGORITHM_RUNS))
def test_two_ranks_train_the_weights_one_process_trains(algorithm, tmp_path):
    extra = ALGORITHM_RUNS[algorithm]
    proc = torchrun(["-m", "fewseg", "train", *tiny(tmp_path / "two", *extra)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "two"), one_process(tmp_path / "one", *extra))
    meta = json.loads((tmp_path / "two" / "checkpoints" / "last" / "meta.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert meta["world_size"] == 2 and [ln["world_size"] for ln in lines] == [2, 2, 2]
    assert [ln["iteration"] for ln in lines] == [1, 2, 3]  # one log, written once (rank 0)


def test_a_two_rank_run_resumes_on_one_rank_to_the_same_weights(tmp_path):
    run = tmp_path / "run"
    proc = torchrun(["-m", "fewseg", "train", *tiny(run, "train.iterations=2")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from fewseg.cli import main
    assert main(["train", "--resume", str(run), "--no-progress", "train.iterations=3"]) == 0
    assert_same_weights(weights(run), one_process(tmp_path / "one"))


def test_a_dying_rank_stops_the_job_with_a_clear_error_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    proc = torchrun([str(HERE / "dist_train.py"), "--die", "1:2", "--", "train", *tiny(run, "train.dist_timeout=60")],
                    tmp_path, timeout=120)
    assert proc.returncode != 0
    # the surviving rank says so in one line: its collective failed, or torchrun's SIGTERM reached it first
    assert ("fewseg: lost contact with another rank" in proc.stderr
            or "fewseg: interrupted at iteration 2 (SIGTERM)" in proc.stderr), proc.stderr[-2000:]
    assert "/fewseg/" not in proc.stderr          # no traceback through fewseg (torchrun prints its own summary)
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["iteration"] == 2  # the checkpoint before the death, loadable
    from fewseg.cli import main
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_weights(weights(run), one_process(tmp_path / "one"))


def test_an_elastic_restart_resumes_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = torchrun(["--max-restarts=1", str(HERE / "dist_train.py"), "--die", "1:2", "--", "train", *tiny(run)],
                    tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout
    assert_same_weights(weights(run), one_process(tmp_path / "one"))


def test_distributed_evaluate_gives_the_single_process_table_with_baselines(tmp_path):
    run = tmp_path / "run"
    one_process(run, "train.iterations=2")
    args = ["evaluate", "--checkpoint", str(run), "--episodes", "5", "--shots", "1", "2", "--queries", "2",
            "--baselines", "zero-shot", "random-init", "transfer", "prototype"]
    from fewseg.cli import main
    assert main([*args, "--output", str(tmp_path / "one.json")]) == 0
    proc = torchrun(["-m", "fewseg", *args, "--output", str(tmp_path / "two.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["results"].keys() == two["results"].keys()
    for shots, methods in one["results"].items():
        assert list(methods) == list(two["results"][shots]) == ["maml", "zero-shot", "random-init", "transfer",
                                                                "prototype"]
        for name, summary in methods.items():
            for key in ("miou", "fb_iou", "episode_iou_mean", "episode_iou_ci95", "n_episodes", "per_class"):
                assert two["results"][shots][name][key] == summary[key], (shots, name, key)
    assert proc.stdout.count("results written to") == 1  # rank 0 alone prints and writes
