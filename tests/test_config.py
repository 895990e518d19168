"""Configs: every key documented where it is declared, the generated reference, removed keys, choices, recipes."""
import dataclasses
from pathlib import Path

import pytest

from fewseg import choices
from fewseg.config import (
    CHOICES,
    LEGACY_KEYS,
    REFERENCE_END,
    REFERENCE_START,
    Config,
    config_from_dict,
    config_keys,
    config_reference,
    load_config,
    migrate_stored,
    reference_block,
    write_reference,
)
from fewseg.errors import ConfigError
from fewseg.recipes import recipe_dir, recipe_names

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_field_and_section_has_a_meaning():
    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"config key {prefix + f.name!r} has no meaning"
            if dataclasses.is_dataclass(f.default_factory if f.default is dataclasses.MISSING else None):
                walk(f.default_factory, f"{prefix}{f.name}.")

    walk(Config)
    assert all(meaning for *_, meaning in config_keys())


def test_reference_has_one_row_per_key_with_type_default_and_meaning():
    table = config_reference().splitlines()
    assert table[0] == "| key | type | default | meaning |"
    keys = [row[0] for row in config_keys()]
    assert len(table) == 2 + len(keys) and len(keys) == len(set(keys))
    assert "train.outer_lr" in keys and "eval.steps" not in keys
    assert "| `train.outer_lr` | float | `0.001` | outer (meta) learning rate (> 0) |" in table
    assert "| `eval.shots` | list of int | `[1, 5]` |" in config_reference()
    assert "| `algorithm.eval_steps` | int or null | `null` |" in config_reference()
    assert all(row.count("|") - row.count("\\|") == 5 for row in table)  # no stray cell separators


def test_readme_holds_the_generated_reference():
    block = reference_block(README)
    assert block is not None, f"README.md lacks {REFERENCE_START} ... {REFERENCE_END}"
    assert block == config_reference(), "README.md is stale: run `fewseg config --write README.md`"


def test_write_reference_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\n\n{REFERENCE_START}\nold table\n{REFERENCE_END}\n\nafter\n")
    assert write_reference(doc) is True
    text = doc.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"{REFERENCE_END}\n\nafter\n") and "old table" not in text
    assert reference_block(doc) == config_reference()
    assert write_reference(doc) is False  # already up to date
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ConfigError, match="plain.md has no"):
        write_reference(tmp_path / "plain.md")


@pytest.mark.parametrize("key", sorted(LEGACY_KEYS))
def test_removed_keys_fail_in_a_users_config_but_stored_configs_still_load(key):
    section, leaf = key.split(".")
    old = {"seed": 2, section: {leaf: None, "episodes": 7}}
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'") as err:
        config_from_dict(old)
    assert "\n" not in str(err.value)
    cfg = config_from_dict(old, stored=True)
    assert cfg.seed == 2 and cfg.eval.episodes == 7
    assert old[section][leaf] is None  # the caller's dict is untouched
    assert leaf not in migrate_stored(old)[section] and migrate_stored({}) == {}


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_enumerated_keys_take_their_values_from_choices_and_list_them(key):
    allowed = CHOICES[key]
    assert allowed in {v for k, v in vars(choices).items() if k.isupper()}
    for value in allowed:
        config_from_dict({}, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"'{key}' must be one of {', '.join(allowed)}; got 'nope'"):
        config_from_dict({}, [f"{key}=nope"])


def test_sampler_class_sampling_comes_from_choices():
    import fewseg
    ds = fewseg.create_dataset("synthetic", split="val", seed=0, image_size=16)
    with pytest.raises(ValueError, match=", ".join(choices.CLASS_SAMPLING)):
        fewseg.EpisodeSampler(ds, class_sampling="nope")


@pytest.mark.parametrize("override", ["eval.threshold=0", "eval.threshold=1.5", "eval.queries=0"])
def test_eval_values_are_checked(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        config_from_dict({}, [override])


def test_recipes_resolve_by_name_with_or_without_yaml_or_by_path(tmp_path, monkeypatch):
    assert "synthetic_maml" in recipe_names()
    by_name = load_config("synthetic_maml").to_dict()
    assert load_config("synthetic_maml.yaml").to_dict() == by_name
    assert load_config(recipe_dir() / "synthetic_maml.yaml").to_dict() == by_name
    assert by_name["name"] == "synthetic_maml"
    monkeypatch.chdir(tmp_path)  # a local file wins over the shipped recipe of that name
    (tmp_path / "synthetic_maml.yaml").write_text("name: mine\n")
    assert load_config("synthetic_maml.yaml").name == "mine"
    assert load_config("synthetic_maml").name == "synthetic_maml"


def test_an_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as err:
        load_config("synthetic_mam")
    message = str(err.value)
    assert "'synthetic_mam'" in message and ", ".join(recipe_names()) in message and "\n" not in message
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        load_config("no/such/file.yaml")


# The demo's published numbers come from this recipe: a change here changes the demo (README, docs/results.md).
DEMO_RECIPE = {
    "seed": 0, "data": {"name": "synthetic", "image_size": 48},
    "model": {"name": "unet", "options": {"depth": 3, "width": 8}},
    "algorithm": {"name": "maml++", "first_order": True, "inner_steps": 5, "inner_lr": 0.2, "eval_steps": 10},
    "train": {"iterations": 200, "meta_batch": 4, "shots": 5, "queries": 5, "outer_lr": 0.001, "grad_clip": 1.0,
              "schedule": "cosine", "val_every": 100, "val_episodes": 40, "checkpoint_every": 100},
    "eval": {"shots": [1, 5], "episodes": 100, "long_steps": 100, "long_episodes": 40},
}


def test_the_demo_trains_the_shipped_recipe_changing_only_name_output_device_and_seed(tmp_path):
    from fewseg.report.demo import demo_config
    recipe = load_config("synthetic_maml").to_dict()
    demo = demo_config(tmp_path / "d").to_dict()
    assert (demo.pop("name"), demo.pop("output")) == ("demo", str(tmp_path / "d"))
    assert demo == {k: v for k, v in recipe.items() if k not in ("name", "output")}
    assert demo == {k: v for k, v in config_from_dict(DEMO_RECIPE).to_dict().items() if k not in ("name", "output")}
    assert demo_config(tmp_path, seed=3).seed == 3
    quick = demo_config(tmp_path, quick=True)
    assert quick.train.iterations == 10 and quick.model == demo_config(tmp_path).model


# --- the algorithm section derives from fewseg.algorithms.options; user errors at load (exit code 2) ------------
def test_algorithm_defaults_are_the_core_options_defaults():
    from fewseg.algorithms.options import CORE_OPTIONS
    algorithm = Config().algorithm
    shared = [f.name for f in dataclasses.fields(algorithm) if f.name in CORE_OPTIONS]
    assert set(shared) == {"inner_steps", "inner_lr", "first_order", "loss", "strategy", "task_chunk", "eval_steps"}
    assert all(getattr(algorithm, name) == CORE_OPTIONS[name] for name in shared)


def test_an_unknown_loss_is_refused_at_load_naming_the_key_and_the_losses():
    from fewseg.losses import LOSSES
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, ["algorithm.loss=focall"])
    message = str(err.value)
    assert "\n" not in message and "'algorithm.loss'" in message and "'focall'" in message
    assert f"one of {', '.join(LOSSES)}" in message
    for name in LOSSES:
        assert config_from_dict({}, [f"algorithm.loss={name}"]).algorithm.loss == name


@pytest.mark.parametrize("override,key", [("algorithm.strategy=nope", "algorithm.strategy"),
                                          ("algorithm.inner_lr=.inf", "algorithm.inner_lr"),
                                          ("algorithm.task_chunk=-1", "algorithm.task_chunk"),
                                          ("algorithm.options={cache_encoder: maybe}", "algorithm.options.cache_encoder"),
                                          ("algorithm.options={proximal: -1}", "algorithm.options.proximal")])
def test_core_algorithm_values_are_checked_by_the_options_rules(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        config_from_dict({}, [override])
    assert config_from_dict({}, ["algorithm.options={cache_encoder: false}"]).algorithm.options == {
        "cache_encoder": False}


@pytest.mark.parametrize("value", ["1e26", str(10**26), "10_000_001", "-1"])
def test_absurd_iterations_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="config key 'train.iterations'") as err:
        config_from_dict({}, [f"train.iterations={value}"])
    assert "\n" not in str(err.value)
    assert config_from_dict({}, ["train.iterations=10000000"]).train.iterations == 10_000_000


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_file_warns_naming_the_file(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.warns(UserWarning, match=r"config file '.*empty\.yaml' is empty"):
        cfg = load_config(path)
    assert cfg == Config()


def test_a_stored_config_with_the_renamed_anil_option_still_loads():
    stored = {"algorithm": {"name": "anil", "options": {"cache_features": False}}}
    assert config_from_dict(stored, stored=True).algorithm.options == {"cache_encoder": False}
    from fewseg.engine.builders import build_all
    with pytest.raises(ConfigError, match="unknown option 'cache_features'"):  # a user's config: refused
        build_all(config_from_dict({"algorithm": {"name": "anil", "options": {"cache_features": False}}}))
    assert "cache_features" in stored["algorithm"]["options"]  # the caller's dict is untouched


@pytest.mark.parametrize("override", ["algorithm.loss=nope", "train.iterations=99999999999"])
def test_the_cli_refuses_these_user_errors_in_one_line_with_exit_code_2(override, capsys):
    from fewseg.cli import main
    assert main(["config", "--show", "synthetic_maml", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and override.split("=")[0] in err
