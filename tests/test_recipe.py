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
