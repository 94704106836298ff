"""The config's training sources and recipes: what each preset fills in, and that the user's own values win."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeface_cli.config import build_config, with_absolute_paths
from edgeface_cli.errors import ConfigError


def test_train_rec_is_a_path_setting_anchored_like_train_dir(tmp_path: Path) -> None:
    config_file = tmp_path / "sub" / "c.yaml"
    config_file.parent.mkdir()
    config_file.write_text(yaml.safe_dump({"data": {"train_rec": "ms1m/train.rec"}}))
    config = build_config(config_file, search_default_file=False)
    assert config.data.train_rec == tmp_path / "sub" / "ms1m" / "train.rec"
    assert config.data.train_dir is None
    assert with_absolute_paths(build_config(None, {"data.train_rec": "x.rec"}, [], search_default_file=False)) \
        .data.train_rec == Path("x.rec").absolute()


def test_train_dir_and_train_rec_together_is_one_line_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(None, {"data.train_dir": "faces"}, ["data.train_rec=faces.rec"], search_default_file=False,
                     flag_names={"data.train_dir": "--train-dir"})
    problem = str(caught.value).splitlines()[1]
    assert "train_dir" in problem and "train_rec" in problem and "--set data.train_rec=faces.rec" in problem


def test_the_edgeface_paper_recipe_fills_what_no_source_sets_and_the_users_values_win(tmp_path: Path) -> None:
    from edgeface_cli.config import build_config_with_sources

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"recipe": "edgeface-paper", "augment": {"blur_p": 0.5}}))
    config, sources = build_config_with_sources(config_file, {}, ["arcface.margin=0.35"], search_default_file=False)
    assert (config.loss.kind, config.arcface.scale, config.loss.partial_fc_sample_rate) == ("cosface", 64.0, 0.3)
    assert (config.optim.optimizer, config.optim.weight_decay) == ("adamw", 0.05)
    augment = config.augment
    assert (augment.downscale_p, augment.downscale_min, augment.downscale_max, augment.hsv_p, augment.grayscale_p) \
        == (0.1, 56, 89, 0.2, 0.1)
    assert config.arcface.margin == 0.35 and augment.blur_p == 0.5  # the user's own values win
    assert sources["arcface.margin"] == "--set arcface.margin=0.35" and sources["augment.blur_p"] == str(config_file)
    assert sources["loss.kind"] == "recipe edgeface-paper" and "optim.head_lr" not in sources  # a default says nothing
    plain = build_config(None, {}, [], search_default_file=False)
    assert (plain.loss.kind, plain.arcface.scale, plain.loss.partial_fc_sample_rate, plain.augment.degrades()) \
        == ("arcface", 32.0, 1.0, False)


def test_config_show_says_where_each_value_came_from_and_reads_back_as_the_same_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    result = CliRunner().invoke(app, ["config", "show", "--set", "recipe=edgeface-paper", "--set", "arcface.scale=32"])
    assert result.exit_code == 0, result.output
    lines = {line.strip().split(":")[0]: line for line in result.output.splitlines()}
    assert lines["scale"].endswith("# --set arcface.scale=32")
    assert lines["partial_fc_sample_rate"].endswith("# recipe edgeface-paper")
    assert "#" not in lines["head_lr"]
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.output)
    assert build_config(shown, search_default_file=False) == build_config(
        None, {}, ["recipe=edgeface-paper", "arcface.scale=32"], search_default_file=False)


def test_the_seeds_arcface_kind_still_works_and_a_disagreement_is_one_line() -> None:
    assert build_config(None, {}, ["arcface.kind=cosface"], search_default_file=False).loss.kind == "cosface"
    with pytest.raises(ConfigError) as caught:
        build_config(None, {}, ["arcface.kind=cosface", "loss.kind=adaface"], search_default_file=False)
    assert "set loss.kind only" in str(caught.value).splitlines()[1]
