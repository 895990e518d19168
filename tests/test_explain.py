"""fewseg evaluate --explain: attention of test and training classes over a task-attention model's memory."""
import json

import pytest
from conftest import tiny_config, tiny_eval

from fewseg.cli import main
from fewseg.config import config_from_dict
from fewseg.data.sources.mixture import MixtureDataset
from fewseg.engine.trainer import Trainer

SLOTS = 4
DOMAINS = [{"name": "synthetic", "options": {"num_classes": 3}},
           {"name": "synthetic", "prefix": "more", "options": {"num_classes": 2, "n_distractors": 0}}]


def tiny_run(path, algorithm):
    cfg = tiny_config(0, train={"iterations": 2, "meta_batch": 2}, eval=tiny_eval(5))
    cfg["data"].update(name="mixture", options={"domains": DOMAINS})
    cfg["algorithm"] = algorithm
    Trainer(config_from_dict(cfg, [f"output={path}"]), progress=False).fit()
    return path


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("ta"), {"name": "task-attention", "inner_steps": 1, "inner_lr": 0.1,
                                                     "options": {"memory_slots": SLOTS}})
    assert main(["evaluate", "--checkpoint", str(run), "--explain", "--shots", "1", "2", "--episodes", "10"]) == 0
    return run, json.loads((run / "explain.json").read_text())


def test_explain_writes_a_heat_map_and_per_class_weights_that_sum_to_one(explained):
    run, record = explained
    assert (run / "explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "eval.json").exists()  # the evaluation itself still runs
    assert record["memory_slots"] == SLOTS and set(record["test"]) == {"1", "2"}
    test = MixtureDataset(DOMAINS, split="test", image_size=16)
    for shot in ("1", "2"):
        per_class = record["test"][shot]
        assert set(per_class) == set(test.class_names.values())  # every test class, episodes cycle over them
        assert sum(v["episodes"] for v in per_class.values()) == 10
        for v in per_class.values():
            assert len(v["weights"]) == SLOTS and sum(v["weights"]) == pytest.approx(1.0)
            assert min(v["weights"]) >= 0
        assert set(record["test_domains"][shot]) == {"synthetic", "more"}
    train = MixtureDataset(DOMAINS, split="train", image_size=16)
    assert set(record["train"]) == set(train.class_names.values())
    assert not set(record["train"]) & set(record["test"]["1"])
    assert [s["slot"] for s in record["slots"]] == list(range(SLOTS))
    for s in record["slots"]:  # the training classes listed for a slot are those attending to it most
        best = max(record["train"].items(), key=lambda kv: kv[1][s["slot"]])
        assert s["train_classes"][0] == [best[0], round(best[1][s["slot"]], 4)]


def test_the_test_weights_are_the_attention_of_the_evaluated_episodes(explained):
    import torch

    from fewseg.data.sampler import EpisodeSampler
    from fewseg.engine.session import load_algorithm
    run, record = explained
    _, algo, _ = load_algorithm(run)
    test = MixtureDataset(DOMAINS, split="test", image_size=16)
    eps = EpisodeSampler(test, 2, 1, seed=0).fixed_episodes(10)  # the run's eval.queries, the CLI's seed
    first = [ep for ep in eps if ep.class_id == eps[0].class_id]
    mean = torch.stack([algo.attention(ep.support_x, ep.support_y) for ep in first]).double().mean(0)
    assert record["test"]["2"][test.class_names[eps[0].class_id]]["weights"] == pytest.approx(mean.tolist())


@pytest.mark.parametrize("algorithm", [
    {"name": "maml", "inner_steps": 1, "inner_lr": 0.1},
    {"name": "task-attention", "inner_steps": 1, "inner_lr": 0.1, "options": {"modulation": False}},
])
def test_an_algorithm_without_attention_is_a_one_line_error(tmp_path, capsys, algorithm):
    run = tiny_run(tmp_path, algorithm)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--explain", "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--explain" in err and repr(algorithm["name"]) in err
    assert not (run / "eval.json").exists() and not (run / "explain.json").exists()  # refused before evaluating
