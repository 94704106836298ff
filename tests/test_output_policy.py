"""The one output rule (issue 27): an existing file needs --force, a command never overwrites its own input,
writes are atomic and strict JSON, and files have their final mode from the moment they exist."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edgeface_cli.atomic import (atomic_write_file, atomic_write_stream, output_file, strict_json,
                                 write_json)
from edgeface_cli.errors import EdgeFaceError, OutputError


def test_output_file_allows_a_new_file(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    assert output_file(target, force=False) == target


def test_output_file_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    target = tmp_path / "old.json"
    target.write_text("{}")
    with pytest.raises(OutputError, match=r"exists; pass --force to replace it"):
        output_file(target, force=False)
    assert output_file(target, force=True) == target
    with pytest.raises(OutputError, match=r"pass --overwrite"):
        output_file(target, force=False, flag="--overwrite")


def test_output_error_is_a_user_error() -> None:
    assert issubclass(OutputError, EdgeFaceError) and OutputError.exit_code == 2


def test_output_file_refuses_its_own_input_even_with_force(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    spelled_otherwise = tmp_path / "sub" / ".." / "model.pt"
    (tmp_path / "sub").mkdir()
    hard_link = tmp_path / "link.pt"
    os.link(source, hard_link)
    symlink = tmp_path / "sym.pt"
    symlink.symlink_to(source)
    for target in (source, spelled_otherwise, hard_link, symlink):
        with pytest.raises(OutputError, match=r"is this command's input; choose another --out"):
            output_file(target, force=True, inputs=[source])
    with pytest.raises(OutputError, match=r"choose another --write-fixed"):
        output_file(source, force=True, inputs=[source], out_flag="--write-fixed")
    # Another file, or no input at all, is not refused for being an input.
    assert output_file(tmp_path / "other.pt", force=False, inputs=[source, None]) == tmp_path / "other.pt"


def test_output_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"is a directory"):
        output_file(tmp_path, force=True)


def test_strict_json_names_where_the_non_finite_value_is() -> None:
    assert json.loads(strict_json({"a": [1.0, None]})) == {"a": [1.0, None]}
    with pytest.raises(ValueError, match=r"\$\.epochs\[1\]\.loss is not finite"):
        strict_json({"epochs": [{"loss": 1.0}, {"loss": float("nan")}]})
    with pytest.raises(ValueError, match=r"\$\.auc is not finite"):
        strict_json({"auc": float("inf")})


def test_write_json_is_strict_indented_and_ends_with_a_newline(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"b": 1, "a": [0.5]})
    text = target.read_text()
    assert text.endswith("}\n") and '\n  "b": 1' in text
    assert json.loads(text) == {"b": 1, "a": [0.5]}
    target.write_text("previous")
    with pytest.raises(ValueError):
        write_json(target, {"x": float("nan")})
    assert target.read_text() == "previous"  # a refused write leaves the previous file
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # and no temp file


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_have_their_final_mode_before_any_byte_is_written(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    seen: list[int] = []
    previous = os.umask(umask)
    try:
        def stream_writer(stream: object) -> None:
            seen.append(stat.S_IMODE(os.fstat(stream.fileno()).st_mode))  # type: ignore[attr-defined]
            stream.write(b"x")  # type: ignore[attr-defined]

        def path_writer(temp_path: Path) -> None:
            seen.append(stat.S_IMODE(temp_path.stat().st_mode))
            temp_path.write_bytes(b"y")

        atomic_write_stream(tmp_path / "a.bin", stream_writer)
        atomic_write_file(tmp_path / "b.bin", path_writer)
    finally:
        os.umask(previous)
    assert seen == [expected, expected]
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == expected


# ------------------------------------------------------------------ the commands that follow it

from typer.testing import CliRunner  # noqa: E402

from edgeface_cli.cli import app  # noqa: E402

runner = CliRunner()


def one_line_refusal(args: list[str], wanted: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert wanted in " ".join(result.output.split()) and "Traceback" not in result.output


def test_config_init_needs_force_to_replace_a_file(tmp_path: Path) -> None:
    target = tmp_path / "edgeface.yaml"
    target.write_text("mine: true\n")
    one_line_refusal(["config", "init", str(target)], "exists; pass --force to replace it")
    assert target.read_text() == "mine: true\n"
    assert runner.invoke(app, ["config", "init", str(target), "--force"]).exit_code == 0
    assert "optim:" in target.read_text()
    one_line_refusal(["config", "init", str(tmp_path)], "is a directory")


def test_troubleshoot_out_needs_force_and_never_replaces_its_input(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "mine.yaml"
    source.write_text("optim:\n  head_lr: 2.0e-4\n")
    out = tmp_path / "remedy.yaml"
    out.write_text("keep me\n")
    one_line_refusal(["troubleshoot", "--level", "1", "--config", str(source), "--out", str(out)],
                     "remedy.yaml exists; pass --force")
    assert out.read_text() == "keep me\n"
    for force in ([], ["--force"]):
        one_line_refusal(["troubleshoot", "--level", "1", "--config", str(source), "--out", str(source), *force],
                         "mine.yaml is this command's input; choose another --out")
    assert source.read_text() == "optim:\n  head_lr: 2.0e-4\n"
    assert runner.invoke(app, ["troubleshoot", "--level", "1", "--config", str(source), "--out", str(out),
                               "--force"]).exit_code == 0
    assert "head_lr: 5.0e-05" in out.read_text()
    # ./edgeface.yaml, picked up as the input, is updated in place only as the default (with its backup).
    (tmp_path / "edgeface.yaml").write_text("optim:\n  head_lr: 2.0e-4\n")
    one_line_refusal(["troubleshoot", "--level", "1", "--out", "edgeface.yaml", "--force"], "is this command's input")
    assert runner.invoke(app, ["troubleshoot", "--level", "1"]).exit_code == 0
    assert (tmp_path / "edgeface.yaml.level0.bak").read_text() == "optim:\n  head_lr: 2.0e-4\n"


def test_inspect_keys_write_fixed_needs_force_and_never_replaces_its_input(tmp_path: Path,
                                                                           zoo_checkpoints: dict[str, Path]) -> None:
    checkpoint = tmp_path / "edgeface_xxs.pt"
    checkpoint.write_bytes(zoo_checkpoints["edgeface_xxs"].read_bytes())
    original = checkpoint.read_bytes()
    layout = ["--set", "model.use_pos_emb=[false,true,true,true]"]
    for force in ([], ["--force"]):
        one_line_refusal(["inspect-keys", "--edgeface", str(checkpoint), *layout, "--write-fixed", str(checkpoint),
                          *force], "edgeface_xxs.pt is this command's input; choose another --write-fixed")
    assert checkpoint.read_bytes() == original
    fixed = tmp_path / "fixed.pt"
    fixed.write_bytes(b"previous")
    one_line_refusal(["inspect-keys", "--edgeface", str(checkpoint), *layout, "--write-fixed", str(fixed)],
                     "fixed.pt exists; pass --force")
    assert fixed.read_bytes() == b"previous"
    result = runner.invoke(app, ["inspect-keys", "--edgeface", str(checkpoint), *layout, "--write-fixed", str(fixed),
                                 "--force"])
    assert result.exit_code == 0, result.output
    assert fixed.read_bytes() != b"previous" and checkpoint.read_bytes() == original


def test_plot_needs_force_to_replace_a_picture(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "stage": 1, "train_loss": 1.0}\n')
    existing = tmp_path / "curves.png"
    existing.write_bytes(b"old")
    one_line_refusal(["plot", str(run), "--out", str(existing)], "curves.png exists; pass --force")
    assert existing.read_bytes() == b"old"
    assert runner.invoke(app, ["plot", str(run), "--out", str(existing), "--force"]).exit_code == 0
    assert existing.read_bytes()[:4] == b"\x89PNG"


def test_print_json_is_strict() -> None:
    from edgeface_cli.cli.common import print_json

    with pytest.raises(ValueError, match=r"\$\.report\.auc is not finite"):
        print_json({"report": {"auc": float("nan")}})


def test_finite_or_none_names_what_it_replaced() -> None:
    from edgeface_cli.atomic import finite_or_none

    cleaned, replaced = finite_or_none({"a": [1.0, float("inf")], "b": {"c": float("nan")}, "d": "x"})
    assert cleaned == {"a": [1.0, None], "b": {"c": None}, "d": "x"}
    assert replaced == ["$.a[1]", "$.b.c"]
    assert finite_or_none([0.5, 2]) == ([0.5, 2], [])


def test_an_infinite_setting_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No NaN or infinity gets into a config (and so into any JSON written from it): refused, naming the field."""
    monkeypatch.chdir(tmp_path)
    for args in (["config", "show", "--json", "--set", "optim.l2sp=.inf"],
                 ["troubleshoot", "--level", "1", "--dry-run", "--json", "--set", "optim.head_lr=.nan"]):
        shown = runner.invoke(app, args)
        assert shown.exit_code == 2 and ("optim.l2sp" in shown.output or "optim.head_lr" in shown.output), shown.output
        assert "Traceback" not in shown.output

def test_a_missing_folder_is_created_and_said_never_silently(tmp_path: Path) -> None:
    from edgeface_cli.atomic import created_folder_note, missing_folder

    target = tmp_path / "missing" / "dir" / "m.onnx"
    assert missing_folder(target) == tmp_path / "missing" / "dir"
    assert created_folder_note(missing_folder(target)) == f"created folder {tmp_path / 'missing' / 'dir'}"
    assert output_file(target, force=False) == target  # allowed: the write creates it
    atomic_write_stream(target, lambda stream: stream.write(b"x"))
    assert missing_folder(target) is None and created_folder_note(None) is None
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="a-file is a file, not a folder; choose another --out"):
        output_file(blocker / "sub" / "out.json", force=True)


def test_every_writer_of_mine_says_which_folder_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "stage": 1, "train_loss": 1.0}\n')
    folder = tmp_path / "new" / "plots"
    result = runner.invoke(app, ["plot", str(run), "--out", str(folder / "curves.png")])
    assert result.exit_code == 0 and f"created folder {folder}" in result.output, result.output
    again = runner.invoke(app, ["plot", str(run), "--out", str(folder / "other.png")])
    assert again.exit_code == 0 and "created folder" not in again.output  # it exists now: nothing to say
    remedy = tmp_path / "fresh" / "remedy.yaml"
    result = runner.invoke(app, ["troubleshoot", "--level", "1", "--out", str(remedy)])
    assert result.exit_code == 0 and f"created folder {remedy.parent}" in result.output, result.output
    dry = runner.invoke(app, ["troubleshoot", "--level", "1", "--out", str(tmp_path / "dry" / "x.yaml"), "--dry-run"])
    assert dry.exit_code == 0 and "created folder" not in dry.output and not (tmp_path / "dry").exists()


def test_embed_enroll_and_config_init_say_which_folder_they_created(tmp_path: Path, xxs_checkpoint: Path,
                                                                   sample_dataset: Path) -> None:
    small = ["--set", "data.image_size=32", "--set", "data.workers=0", "--device", "cpu"]
    image = str(next((sample_dataset / "val").rglob("*.png")))
    commands = {
        tmp_path / "e" / "vectors.npz": ["embed", image, "--checkpoint", str(xxs_checkpoint), "--out", "{out}", *small],
        tmp_path / "g" / "gallery.npz": ["enroll", str(sample_dataset / "train"), "--checkpoint", str(xxs_checkpoint),
                                         "--out", "{out}", *small],
        tmp_path / "c" / "my.yaml": ["config", "init", "{out}"],
    }
    for out, args in commands.items():
        result = runner.invoke(app, [str(out) if arg == "{out}" else arg for arg in args])
        assert result.exit_code == 0 and out.is_file(), result.output
        assert f"created folder {out.parent}" in " ".join(result.output.split()), result.output
