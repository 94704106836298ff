"""`eval --bin` is insightface's verification protocol, checked against an independent implementation of it;
non-finite embeddings are refused (eval, embed) or recorded (training); crafted `.bin` pickles are bounded."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data import binsets
from edgeface_cli.data.binsets import BinSet, read_bin
from edgeface_cli.errors import CheckpointError, DataError
from edgeface_cli.evaluation.benchmark import bin_metrics, evaluate_binset, grid_kfold_accuracy
from edgeface_cli.model.runtime import FP32
from ..conftest import FAST
from .bin_reference import insightface_reference, python2_bin, sklearn_normalize

runner = CliRunner()


# ------------------------------------------------------------------ the protocol


def pairs_at_distances(squared: list[float]) -> torch.Tensor:
    """Unit embeddings, 2 per pair, whose squared L2 distances are exactly ``squared`` (cos = 1 - d/2)."""
    rows = []
    for distance in squared:
        cosine = 1.0 - distance / 2.0
        rows += [[1.0, 0.0, 0.0], [cosine, float(np.sqrt(max(0.0, 1.0 - cosine * cosine))), 0.0]]
    return torch.tensor(rows, dtype=torch.float64)


def binset_of(same: np.ndarray, name: str = "T") -> BinSet:
    return BinSet(name, Path(f"{name}.bin"), [], np.asarray(same, dtype=bool))


def test_the_protocol_equals_insightface_on_random_embeddings() -> None:
    rng = np.random.default_rng(7)
    for pairs in (137, 60, 10, 1003):  # uneven folds (the first pairs % 10 one larger), the smallest, a big one
        same = rng.random(pairs) < 0.5
        anchors = rng.normal(size=(pairs, 16))
        noise = rng.normal(size=(pairs, 16)) * np.where(same, 0.6, 1.4)[:, None]
        raw = np.empty((2 * pairs, 16))
        raw[0::2], raw[1::2] = anchors, np.where(same[:, None], anchors + noise, rng.normal(size=(pairs, 16)))
        embeddings = sklearn_normalize(raw)
        mean, std, folds = insightface_reference(embeddings, same)
        entry = bin_metrics(torch.from_numpy(embeddings), binset_of(same))
        assert entry["accuracy_mean"] == pytest.approx(mean, abs=1e-4 / 100)  # 0.0001 pp: the same answers
        assert entry["accuracy_std"] == pytest.approx(std, abs=1e-12)
        assert entry["folds_accuracy"] == pytest.approx(folds, abs=1e-12)
        assert 0.55 < mean < 1.0  # a non-trivial case: neither chance nor perfect


def test_ties_and_distances_on_the_grid_follow_insightface() -> None:
    """Distances exactly on grid values (0, 2, 4: identical, orthogonal, opposite vectors): "same" needs
    distance < threshold, strictly; equal train accuracies go to the first (smallest) threshold."""
    squared = [0.0, 2.0, 4.0, 2.0, 0.0, 4.0, 2.0, 2.0, 0.0, 4.0] * 3
    same = np.array([True, True, False, False, True, False, True, False, False, True] * 3)
    embeddings = pairs_at_distances(squared)
    mean, std, folds = insightface_reference(embeddings.numpy(), same)
    entry = bin_metrics(embeddings, binset_of(same))
    assert entry["accuracy_mean"] == pytest.approx(mean, abs=1e-12)
    assert entry["folds_accuracy"] == pytest.approx(folds, abs=1e-12)
    assert entry["accuracy_std"] == pytest.approx(std, abs=1e-12)


def test_the_reported_figure_is_the_grid_and_the_exact_cosine_one_is_labelled_beside_it() -> None:
    """Every pair inside one grid cell [1.00, 1.01): an exact threshold separates them, the grid cannot."""
    rng = np.random.default_rng(3)
    same = np.array([True, False] * 20)
    squared = np.where(same, rng.uniform(1.001, 1.004, 40), rng.uniform(1.006, 1.009, 40)).tolist()
    entry = bin_metrics(pairs_at_distances(squared), binset_of(same))
    mean, _, _ = insightface_reference(pairs_at_distances(squared).numpy(), same)
    assert entry["accuracy_mean"] == pytest.approx(mean) and mean == pytest.approx(0.5)
    # (a held-out pair just beyond its train folds' exact threshold can still miss: not quite 100 %)
    assert entry["exact_cosine"]["accuracy"] >= 0.95 and "exact best cosine" in entry["exact_cosine"]["protocol"]
    assert entry["protocol"].startswith("insightface verification")
    # A cosine between the two groups' (cos = 1 - d/2: same pairs 0.4980..0.4995, different 0.4955..0.4970).
    assert 0.4955 < entry["exact_cosine"]["threshold"] <= 0.4995
    json.dumps(entry, allow_nan=False)


def test_flip_sum_then_normalise_end_to_end_equals_insightface() -> None:
    """evaluate_binset on pixels through a small fixed model: emb(image) + emb(mirror), normalised, then the
    protocol, against the same steps done here in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 12)).eval()
    pairs = 53
    generator = torch.Generator().manual_seed(1)
    anchors = torch.randint(0, 256, (pairs, 3, 8, 8), generator=generator)
    same = (torch.rand(pairs, generator=generator) < 0.5).numpy()
    jitter = torch.randint(-40, 41, (pairs, 3, 8, 8), generator=generator)
    others = torch.randint(0, 256, (pairs, 3, 8, 8), generator=generator)
    seconds = torch.where(torch.from_numpy(same)[:, None, None, None], (anchors + jitter).clamp(0, 255), others)
    pixels = torch.stack([anchors, seconds], dim=1).reshape(2 * pairs, 3, 8, 8).to(torch.uint8)
    entry = evaluate_binset(model, binset_of(same), pixels, torch.device("cpu"), FP32, batch_size=16)

    inputs = pixels.float() / 255.0 * 2.0 - 1.0  # ((x / 255) - 0.5) / 0.5, as insightface feeds its backbone
    with torch.no_grad():
        summed = model(inputs).double().numpy() + model(inputs.flip(-1)).double().numpy()
    mean, std, _ = insightface_reference(sklearn_normalize(summed), same)
    assert entry["accuracy_mean"] == pytest.approx(mean, abs=1e-4)  # within 0.01 pp
    assert entry["accuracy_std"] == pytest.approx(std, abs=1e-4)
    assert entry["nonfinite"] == 0 and entry["reason"] is None


def test_fewer_pairs_than_folds_are_refused() -> None:
    with pytest.raises(ValueError, match="10 folds"):
        grid_kfold_accuracy(np.zeros(9), np.zeros(9, dtype=bool))


# ------------------------------------------------------------------ non-finite embeddings


class Broken(nn.Module):
    """A model whose outputs are NaN for some images, though it holds no weight at all (as an ONNX graph can)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = inputs.flatten(1)[:, :8].float().clone()
        out[inputs.flatten(1)[:, 0] > 0.5] = float("nan")
        return out


def test_non_finite_embeddings_give_no_figure_and_say_why() -> None:
    embeddings = pairs_at_distances([0.5, 1.5] * 10)
    embeddings[3, 0] = float("nan")
    entry = bin_metrics(embeddings, binset_of(np.array([True, False] * 10)))
    assert entry["accuracy_mean"] is None and entry["roc_auc"] is None and entry["nonfinite"] == 1
    assert "1 of 40 embeddings are NaN or infinite" in entry["reason"]
    json.dumps(entry, allow_nan=False)  # strict JSON: no NaN anywhere


def test_extraction_refuses_non_finite_embeddings_naming_the_model() -> None:
    from edgeface_cli.evaluation.inference import extract, validate

    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    images[[1, 4], :, 0, 0] = 255
    loader = [(images, torch.full((6,), -1), torch.arange(6), None)]
    with pytest.raises(CheckpointError, match=r"^model\.onnx gives non-finite .* for 2 of 6 images"):
        extract(Broken(), loader, torch.device("cpu"), FP32, model="model.onnx")
    # Training's validation counts them and carries on (its own guards decide what to do).
    result = validate(Broken(), None, loader, torch.device("cpu"), FP32)
    assert result.nonfinite == 2


def test_training_records_no_bin_accuracy_for_non_finite_embeddings_and_carries_on() -> None:
    """The per-epoch .bin figure of a broken model is None (never the 50 % a NaN distance scores), and
    the held-out summary skips it instead of failing."""
    from edgeface_cli.training.generality import GeneralityCheck
    from edgeface_cli.training.heldout import describe_generality, held_out_score

    pixels = torch.zeros(20, 3, 4, 4, dtype=torch.uint8)
    pixels[7, :, 0, 0] = 255  # one image's embedding is NaN
    binset = BinSet("LFW", Path("lfw.bin"), [], np.array([True, False] * 5))
    row = GeneralityCheck(None, [(binset, pixels)], batch_size=8).measure(Broken(), torch.device("cpu"), FP32)
    assert row == {"bin_lfw_acc": None}
    assert held_out_score(row) is None and describe_generality(row) == ""


@pytest.fixture(scope="module")
def overflowing_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Finite weights whose outputs overflow: the final norm scaled to 3e38, so its outputs reach infinity and
    the last layer then makes NaN. A check of the weights alone cannot see it."""
    from edgeface_cli.model.backbones import EdgeFace

    torch.manual_seed(0)
    state = EdgeFace("edgeface_xxs").state_dict()
    state["model.head.norm.weight"] = torch.full_like(state["model.head.norm.weight"], 3e38)
    assert all(torch.isfinite(tensor).all() for tensor in state.values())
    path = tmp_path_factory.mktemp("overflow") / "overflowing.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def small_bin(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = sorted((sample_dataset / "val").rglob("*.png"))[:10]
    images = [files[index % len(files)].read_bytes() for index in range(20)]
    path = tmp_path_factory.mktemp("bins") / "lfw.bin"
    path.write_bytes(python2_bin(images, [index % 2 == 0 for index in range(10)]))
    return path


def test_eval_bin_refuses_a_model_whose_embeddings_are_not_finite(overflowing_checkpoint: Path,
                                                                 small_bin: Path) -> None:
    result = runner.invoke(app, ["eval", "--bin", str(small_bin), "--checkpoint", str(overflowing_checkpoint), *FAST])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "overflowing.pt gives non-finite (NaN or infinite) embeddings for" in output and "of 20 images" in output
    assert "Traceback" not in result.output and "50.00%" not in output


def test_embed_refuses_a_model_whose_embeddings_are_not_finite(overflowing_checkpoint: Path, sample_dataset: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "val.npz"
    result = runner.invoke(app, ["embed", str(sample_dataset / "val"), "--checkpoint", str(overflowing_checkpoint),
                                 "--out", str(out), *FAST])
    assert result.exit_code == 2, result.output
    assert "non-finite (NaN or infinite) embeddings for" in " ".join(result.output.split())
    assert not out.exists() and "Traceback" not in result.output


# ------------------------------------------------------------------ crafted pickles: memo references bounded


def memo_bin(distinct: list[bytes], references: int, pairs: int) -> bytes:
    """A .bin whose images list holds ``distinct`` images (each memoised) then ``references`` BINGETs of the
    first: a few bytes each, however large the image they name."""
    out = bytearray(b"\x80\x02]q\x00(")
    for index, image in enumerate(distinct):
        out += b"T" + struct.pack("<i", len(image)) + image + b"q" + bytes([index + 1])
    out += b"h\x01" * references
    out += b"e]q\xf0(" + b"\x88\x89" * (pairs // 2) + b"\x88" * (pairs % 2) + b"e\x86q\xf1."
    return bytes(out)


def test_memo_references_cannot_make_a_small_file_claim_large_images(tmp_path: Path) -> None:
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(memo_bin([bytes(range(256)) * 200], references=19, pairs=10))  # 20 "images" of 51 kB
    with pytest.raises(DataError, match=r"cfp_fp\.bin is refused: its images add up to 1024000 bytes, more than"):
        read_bin(path)
    result = runner.invoke(app, ["eval", "--bin", str(path), "--checkpoint", str(tmp_path / "none.pt")])
    assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output


def test_memo_references_to_small_images_are_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(memo_bin([bytes([index]) * 20 for index in range(18)], references=2, pairs=10))
    assert 20 * 20 <= path.stat().st_size  # the byte total alone would not catch it
    with pytest.raises(DataError, match=r"2 of its 20 images are references to another one"):
        read_bin(path)


def test_a_file_claiming_more_pairs_than_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(python2_bin([bytes([index]) * 20 for index in range(24)], [True, False] * 6))
    assert read_bin(path).pairs == 12
    monkeypatch.setattr(binsets, "MAX_PAIRS", 11)
    with pytest.raises(DataError, match=r"claims 12 pairs, more than the 11"):
        read_bin(path)


def test_too_few_pairs_or_too_small_images_are_not_a_bin(tmp_path: Path) -> None:
    path = tmp_path / "few.bin"
    path.write_bytes(python2_bin([bytes([index]) * 20 for index in range(18)], [True, False] * 4 + [True]))
    with pytest.raises(DataError, match=r"holds 9 pairs; .* at least 10"):
        read_bin(path)
    path.write_bytes(python2_bin([b"x" * 20] * 19 + [b"tiny"], [True] * 10))
    with pytest.raises(DataError, match="shorter than 16 bytes"):
        read_bin(path)


def test_an_image_claiming_a_huge_picture_is_refused_before_its_pixels_are_decoded(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from edgeface_cli.data.binsets import decode_bin_images

    small, huge = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (32, 32)).save(small, format="PNG")
    Image.new("L", (3000, 3000)).save(huge, format="PNG")  # 9 megapixels in a few kilobytes
    path = tmp_path / "calfw.bin"
    path.write_bytes(python2_bin([small.getvalue()] * 19 + [huge.getvalue()], [True, False] * 5))
    binset = read_bin(path)
    assert len(huge.getvalue()) < 20_000
    with pytest.raises(DataError, match=r"image 19 claims 3000x3000 pixels"):
        decode_bin_images(binset, 32)
    assert decode_bin_images(BinSet("x", path, binset.images[:19], binset.same), 32).shape == (19, 3, 32, 32)
