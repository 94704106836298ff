from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig, build_config, commented_default_yaml
from edgeface_cli.errors import ConfigError

runner = CliRunner()


def test_defaults_are_the_seed_documents_new_values() -> None:
    config = EdgeFaceConfig()
    assert config.optim.head_lr == 1e-4
    assert config.optim.backbone_lr == 3e-6
    assert config.optim.head_lr_stage2 == 3e-5
    assert (config.arcface.scale, config.arcface.margin) == (32.0, 0.3)
    assert config.guard.max_grad_norm == 1.0
    assert (config.optim.stage1_epochs, config.optim.epochs) == (5, 30)
    assert config.model.use_pos_emb == [False, True, False, False]


def test_precedence_defaults_file_flags_set(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"optim": {"head_lr": 2e-4, "backbone_lr": 5e-6}, "runtime": {"device": "cpu"}}))
    from_file = build_config(config_file)
    assert from_file.optim.head_lr == 2e-4 and from_file.optim.backbone_lr == 5e-6
    assert from_file.optim.head_lr_stage2 == 3e-5  # untouched default

    with_flag = build_config(config_file, {"runtime.device": "cuda", "optim.head_lr": None})
    assert with_flag.runtime.device == "cuda"  # flag beats file
    assert with_flag.optim.head_lr == 2e-4  # an absent flag leaves the file's value

    with_set = build_config(config_file, {"runtime.device": "cuda"}, ["runtime.device=mps", "optim.head_lr=7e-5"])
    assert with_set.runtime.device == "mps"  # --set beats flag
    assert with_set.optim.head_lr == 7e-5


def test_default_file_in_working_directory_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgeface.yaml").write_text("arcface:\n  scale: 16\n")
    assert build_config().arcface.scale == 16


def test_set_parses_yaml_values() -> None:
    config = build_config(None, {}, ["model.use_pos_emb=[false,true,true,true]", "data.hflip=false", "optim.head_lr=1e-3"])
    assert config.model.use_pos_emb == [False, True, True, True]
    assert config.data.hflip is False
    assert config.optim.head_lr == 1e-3


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.head_lr=-1", "optim.head_lr"),
        ("arcface.margin=1.6", "arcface.margin"),
        ("optim.no_such_field=1", "optim.no_such_field"),
        ("model.arch=edgeface_huge", "model.arch"),
        ("data.image_size=100", "data.image_size"),
        ("model.use_pos_emb=[true]", "model.use_pos_emb"),
        ("optim.stage1_epochs=40", "optim"),
    ],
)
def test_each_validation_error_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(None, {}, [override], search_default_file=False)
    assert any(line.startswith(field + ":") for line in str(caught.value).splitlines()[1:])


def test_several_problems_one_line_each() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(None, {}, ["optim.head_lr=-1", "arcface.margin=2"], search_default_file=False)
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 2


def test_bad_config_via_cli_exits_2_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show", "--set", "optim.head_lr=-1"])
    assert result.exit_code == 2
    assert "optim.head_lr" in result.output
    assert "Traceback" not in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [unclosed\n")
    result = runner.invoke(app, ["config", "show", "--config", str(broken)])
    assert result.exit_code == 2 and "cannot read config file" in result.output
    result = runner.invoke(app, ["config", "show", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("optim: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        build_config(evil)
    assert not (tmp_path / "pwned").exists()


def test_config_show_json_and_init_round_trip(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show", "--json", "--set", "arcface.scale=20"])
    assert result.exit_code == 0
    import json

    assert json.loads(result.output)["arcface"]["scale"] == 20
    target = tmp_path / "edgeface.yaml"
    result = runner.invoke(app, ["config", "init", str(target)])
    assert result.exit_code == 0
    text = target.read_text()
    assert "# head learning rate in stage 1" in text
    assert build_config(target) == EdgeFaceConfig()
    assert runner.invoke(app, ["config", "init", str(target)]).exit_code == 2  # no silent overwrite
    assert commented_default_yaml() == text


def test_cache_on_and_off_survive_yaml_booleans(tmp_path) -> None:
    assert build_config(None, {}, ["data.cache=on"], search_default_file=False).data.cache == "on"
    assert build_config(None, {}, ["data.cache=off"], search_default_file=False).data.cache == "off"
    config_file = tmp_path / "edgeface.yaml"
    config_file.write_text("data:\n  cache: off\n")
    assert build_config(config_file).data.cache == "off"
    with pytest.raises(ConfigError, match="data.cache"):
        build_config(None, {}, ["data.cache=sometimes"], search_default_file=False)


@pytest.mark.parametrize("text, field, expected", [
    ("runtime:\n  amp: off\n", ("runtime", "amp"), "off"),
    ("data:\n  align: off\n", ("data", "align"), "off"),
    ("data:\n  align: no\n", ("data", "align"), "off"),
    ("data:\n  cache: on\n", ("data", "cache"), "on"),
    ("arcface:\n  sharded: off\n", ("arcface", "sharded"), "off"),
])
def test_yaml_1_1_on_off_means_the_word_in_choices_that_offer_it(tmp_path: Path, text: str, field: tuple[str, str],
                                                                  expected: str) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text(text)
    section, name = field
    assert getattr(getattr(build_config(config_file), section), name) == expected
    # --set values are parsed as YAML too
    assert getattr(getattr(build_config(None, None, [f"{section}.{name}={text.split(': ')[1].strip()}"],
                                        search_default_file=False), section), name) == expected


def test_every_choice_offering_on_or_off_reads_yaml_booleans() -> None:
    """A new on/off choice gets the same reading without anyone remembering to add it."""
    from typing import Literal, get_args, get_origin

    choices = [(section_name, name) for section_name, section in EdgeFaceConfig.model_fields.items()
               if hasattr(section.annotation, "model_fields")
               for name, info in section.annotation.model_fields.items()
               if get_origin(info.annotation) is Literal and "off" in get_args(info.annotation)]
    assert ("runtime", "amp") in choices and ("data", "align") in choices and len(choices) >= 4
    for section, name in choices:
        assert getattr(getattr(build_config(None, None, [f"{section}.{name}=off"], search_default_file=False),
                               section), name) == "off"


def test_true_where_a_choice_has_no_on_is_named_as_on(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("runtime:\n  amp: on\n")
    with pytest.raises(ConfigError, match=r"runtime.amp: Input should be .*'off' \(got 'on'\); set by"):
        build_config(config_file)


def test_paths_in_a_config_file_are_relative_to_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface_cli.config import with_absolute_paths

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "c.yaml").write_text(yaml.safe_dump({
        "model": {"checkpoint": "weights/xxs.pt"},
        "data": {"train_dir": "data/train", "holdout_dir": "strangers", "val_bins": ["bins/lfw.bin", "/abs/cfp.bin"],
                 "cache_dir": "~/cache"},
        "runtime": {"out": "runs/a"},
    }))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = with_absolute_paths(build_config(Path("../project/c.yaml"), {"data.val_dir": Path("val")}))
    assert config.model.checkpoint == folder / "weights/xxs.pt"
    assert config.data.train_dir == folder / "data/train" and config.data.holdout_dir == folder / "strangers"
    assert config.data.val_bins == [folder / "bins/lfw.bin", Path("/abs/cfp.bin")]
    assert config.data.cache_dir == Path("~/cache").expanduser()
    assert config.runtime.out == folder / "runs/a"
    assert config.data.val_dir == elsewhere / "val"  # a flag is relative to where the command runs


def test_with_absolute_paths_covers_every_path_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface_cli.config import path_fields, with_absolute_paths

    monkeypatch.chdir(tmp_path)
    # train_rec excludes train_dir (tests/test_recipe.py), rehearsal_rec rehearsal_dir (one public set).
    fields = [field for field in path_fields() if field[1] not in ("train_rec", "rehearsal_rec")]
    assert {("data", "holdout_dir", False), ("data", "val_bins", True)} <= set(fields)
    overrides = {f"{section}.{name}": ["rel/x.bin"] if is_list else "rel/x" for section, name, is_list in fields}
    config = with_absolute_paths(build_config(None, overrides, [], search_default_file=False))
    for section, name, is_list in fields:
        value = getattr(getattr(config, section), name)
        for path in value if is_list else [value]:
            assert path.is_absolute() and path.is_relative_to(tmp_path), (section, name)


def test_a_written_config_names_the_same_files_wherever_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface_cli.config import dump_yaml

    monkeypatch.chdir(tmp_path)
    config = build_config(None, {"data.train_dir": Path("data/train"), "runtime.out": Path("runs/next")}, [],
                          search_default_file=False)
    written = tmp_path / "runs" / "old" / "config.level1.yaml"  # troubleshoot writes into a run folder
    written.parent.mkdir(parents=True)
    written.write_text(dump_yaml(config))
    read_back = build_config(written)
    assert read_back.data.train_dir == tmp_path / "data/train" and read_back.runtime.out == tmp_path / "runs/next"
