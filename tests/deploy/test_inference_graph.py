"""The channels-last inference graph computes the backbone's function, and onnxruntime runs it without the
layout transposes that made the plain export slow; the ONNX runner splits batches without changing results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.deploy.inference_graph import ChannelsLastEdgeFace, UnsupportedLayout
from edgeface_cli.model.programs import IMAGES_PER_RUN, OnnxBackbone
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.zoo import ZOO

from .conftest import ONNX_SIZE, saved_backbone

SIZE = 64  # feature maps 16, 8, 4, 2: every stage, its attention block and positional encoding


def perturbed(arch: str, use_pos_emb: tuple[bool, ...] | None = None, seed: int = 0) -> EdgeFace:
    """A backbone whose layer scales and temperatures are far from their initial values, as after training
    (at init the blocks' gamma is 1e-6 and would hide a wrong MLP or attention)."""
    torch.manual_seed(seed)
    backbone = EdgeFace(arch, use_pos_emb) if use_pos_emb else EdgeFace(arch)
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return backbone.eval()


@pytest.mark.parametrize("arch", list(ZOO))
def test_the_rewrite_computes_the_backbones_embeddings(arch: str) -> None:
    backbone = perturbed(arch)
    rewritten = ChannelsLastEdgeFace(backbone, SIZE)
    images = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        expected, got = backbone(images), rewritten(images)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), perturbed(arch).state_dict().values()))


def test_positional_encodings_in_every_stage_are_kept() -> None:
    backbone = perturbed("edgeface_xxs", (True, True, True, True))
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ChannelsLastEdgeFace(backbone, SIZE)(images), backbone(images), rtol=1e-4, atol=1e-4)
        without = EdgeFace("edgeface_xxs", (False, False, False, False)).eval()
        without.load_state_dict(backbone.state_dict(), strict=False)  # same weights, no encodings: must differ
        assert not torch.allclose(ChannelsLastEdgeFace(without, SIZE)(images), backbone(images), atol=1e-3)


def test_an_unknown_timm_layout_is_refused_not_guessed() -> None:
    backbone = EdgeFace("edgeface_xxs").eval()
    backbone.model.stages[1].blocks[0] = torch.nn.Identity()
    with pytest.raises(UnsupportedLayout):
        ChannelsLastEdgeFace(backbone, SIZE)


def transposes_after_optimisation(path: Path, work: Path) -> list[list[int]]:
    """The permutations of the Transpose nodes left once onnxruntime has optimised the graph for this CPU."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(work / "optimised.onnx")
    onnxruntime.set_default_logger_severity(3)  # it warns that such a file is machine specific: it is only read here
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(work / "optimised.onnx")).graph
    return [list(onnx.helper.get_attribute_value(attribute)) for node in graph.node if node.op_type == "Transpose"
            for attribute in node.attribute if attribute.name == "perm"]


@pytest.fixture(scope="module")
def exported(onnx_default: Path) -> tuple[EdgeFace, Path]:
    """A perturbed XXS as ``edgeface export`` writes ONNX by default: the session's file (at 32 px)."""
    return saved_backbone(onnx_default / "source.pt"), onnx_default / "model.onnx"


def test_onnxruntime_runs_the_exported_graph_without_the_layout_transposes(exported: tuple[EdgeFace, Path],
                                                                          tmp_path: Path) -> None:
    backbone, path = exported
    left = transposes_after_optimisation(path, tmp_path)
    # The plain export left 29 at this point, 9 of them the attention's 5-D moves, which onnxruntime runs with
    # its generic kernel; now only those around the attention blocks' split convolutions remain (XXS has 3).
    assert not any(len(perm) == 5 for perm in left)
    assert len(left) <= 4 * 3
    images = torch.rand(5, 3, ONNX_SIZE, ONNX_SIZE) * 2 - 1
    with torch.no_grad():
        expected = backbone(images)
    got = OnnxBackbone(path, threads=1)(images)
    assert float(torch.nn.functional.cosine_similarity(got, expected).min()) >= 0.9999


def test_the_file_is_standard_and_onnxruntime_fuses_its_gelus_itself(exported: tuple[EdgeFace, Path],
                                                                     tmp_path: Path) -> None:
    """No runtime's own operator in the file; onnxruntime recognises the GELU's Erf form when it loads it."""
    import onnx

    from edgeface_cli.deploy.inference_graph import TokenMlp

    backbone, path = exported
    assert {node.domain for node in onnx.load(str(path)).graph.node} <= {""}
    transposes_after_optimisation(path, tmp_path)  # writes the graph onnxruntime runs
    optimised = [(node.domain, node.op_type) for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    mlps = sum(isinstance(module, TokenMlp) for module in ChannelsLastEdgeFace(backbone, SIZE).modules())
    assert ("", "Erf") not in optimised and optimised.count(("com.microsoft", "Gelu")) == mlps == 12


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_onnx_runner_splits_a_batch_without_changing_it(threads: int, exported: tuple[EdgeFace, Path]) -> None:
    runner = OnnxBackbone(exported[1], threads=threads)
    images = torch.rand(7, 3, ONNX_SIZE, ONNX_SIZE) * 2 - 1
    spans = runner.chunks(len(images))
    assert spans[0][0] == 0 and spans[-1][1] == 7 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert len(spans) >= min(threads, 7) and max(stop - start for start, stop in spans) <= IMAGES_PER_RUN
    whole = OnnxBackbone(exported[1], threads=1).sessions[1].run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(runner(images).numpy(), whole, rtol=1e-5, atol=1e-5)
    assert runner(images[:1]).shape == (1, 512)  # too small to split: the intra-op session


def test_a_dynamic_int8_file_embeds_each_image_as_it_would_alone(exported: tuple[EdgeFace, Path], tmp_path: Path) -> None:
    """Dynamic int8 scales each layer's input over the whole run: run with others, an image's embedding would
    depend on them (measured: cosine 0.99994 against the same image alone)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_file = tmp_path / "model.int8.onnx"  # as export --int8 wrote them before it wrote static int8
    quantize_dynamic(str(exported[1]), str(int8_file), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    runner = OnnxBackbone(int8_file, threads=2)
    assert runner.one_image_per_run and not OnnxBackbone(exported[1], threads=2).one_image_per_run
    images = torch.rand(6, 3, ONNX_SIZE, ONNX_SIZE) * 2 - 1
    images[1:] *= 3  # batch-mates with a wider range of values
    alone = runner.sessions[1].run(None, {"images": images[:1].numpy()})[0]
    together = runner.sessions[1].run(None, {"images": images.numpy()})[0][:1]
    assert not np.array_equal(alone, together)  # what one scale per run does
    np.testing.assert_array_equal(runner(images)[:1].numpy(), alone)
