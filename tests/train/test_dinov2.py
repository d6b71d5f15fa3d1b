"""The DINOv2 ViT-S/14 backbone.

No DINOv2 weights ship offline, so every test here uses RANDOM weights: they check shapes, the
state-dict layout against the official checkpoint's key list (built from the architecture
description, not from our own module), strict loading, the position-embedding handling, the
attention arithmetic, and the ONNX export (opset 18, onnx.checker, ONNX Runtime vs torch within
1e-4). None of them says anything about the quality of the features of the real checkpoint.
Images are 56-112 px (4-8 patches per side) so the suite stays fast on two cores.
"""

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoweld.export.onnx_export import export_onnx
from autoweld.train.backbones import (
    DinoV2ViT,
    assemble_backbone,
    build_backbone,
    interpolate_position_embedding,
)
from autoweld.train.heads import HeadContext, InspectionGraph, build_head

DIM, DEPTH, MLP = 384, 12, 4 * 384


def official_vits14_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``dinov2_vits14_pretrain.pth``, written from the architecture
    description (patch 14, dim 384, 12 blocks, 6 heads, MLP ratio 4, LayerScale, 37x37 position
    grid + class token, mask token, no register tokens, no classifier head)."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, 1 + 37 * 37, DIM),
        "mask_token": (1, DIM),
        "patch_embed.proj.weight": (DIM, 3, 14, 14),
        "patch_embed.proj.bias": (DIM,),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (DIM,),
                b + "norm1.bias": (DIM,),
                b + "attn.qkv.weight": (3 * DIM, DIM),
                b + "attn.qkv.bias": (3 * DIM,),
                b + "attn.proj.weight": (DIM, DIM),
                b + "attn.proj.bias": (DIM,),
                b + "ls1.gamma": (DIM,),
                b + "norm2.weight": (DIM,),
                b + "norm2.bias": (DIM,),
                b + "mlp.fc1.weight": (MLP, DIM),
                b + "mlp.fc1.bias": (MLP,),
                b + "mlp.fc2.weight": (DIM, MLP),
                b + "mlp.fc2.bias": (DIM,),
                b + "ls2.gamma": (DIM,),
            }
        )
    shapes["norm.weight"] = (DIM,)
    shapes["norm.bias"] = (DIM,)
    return shapes


@pytest.fixture(scope="module")
def extractor():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_backbone("dinov2_vits14", random_weights=True)
    torch.set_num_threads(threads)


def test_state_dict_keys_and_shapes_match_the_official_checkpoint():
    ours = {k: tuple(v.shape) for k, v in DinoV2ViT().state_dict().items()}
    assert ours == official_vits14_shapes()
    assert len(ours) == 5 + 14 * DEPTH + 2


def test_weights_load_strictly_from_a_checkpoint_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator) for k, s in official_vits14_shapes().items()}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    loaded = build_backbone("dinov2_vits14", weights=path)
    torch.testing.assert_close(loaded.model.blocks[11].ls2.gamma, state["blocks.11.ls2.gamma"])
    assert loaded.weights_sha256 is not None and loaded.info.layers == ("blocks.7", "blocks.11")
    extra = dict(state, **{"register_tokens": torch.zeros(1, 4, DIM)})  # a "_reg" checkpoint
    torch.save(extra, tmp_path / "reg.pth")
    with pytest.raises(ValueError, match="does not fit backbone 'dinov2_vits14'"):
        build_backbone("dinov2_vits14", weights=tmp_path / "reg.pth")
    missing = {k: v for k, v in state.items() if k != "mask_token"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="mask_token"):
        build_backbone("dinov2_vits14", weights=tmp_path / "missing.pth")


def test_needs_weights_or_an_explicit_random_init():
    with pytest.raises(ValueError, match="--weights"):
        build_backbone("dinov2_vits14")


@pytest.mark.parametrize("size", [56, 112])
def test_taps_are_patch_token_maps_at_stride_14(extractor, size):
    image = torch.randn(2, 3, size, size)
    with torch.no_grad():
        taps = extractor(image)
    side = size // 14
    assert [tuple(t.shape) for t in taps] == [(2, DIM, side, side)] * 2
    assert extractor.channels == (DIM, DIM) and extractor.strides == (14, 14)
    # the tap is the final-LayerNorm'd patch tokens of block 12, row-major over (h, w)
    model = extractor.model
    with torch.no_grad():
        tokens = model.stem(image)
        for block in model.blocks:
            tokens = block(tokens)
        normed = model.norm(tokens)
    i, j = side - 1, 1
    torch.testing.assert_close(taps[1][:, :, i, j], normed[:, 1 + i * side + j])
    assert not torch.allclose(taps[0], taps[1])


@pytest.mark.parametrize("size", [64, 100, 13])
def test_an_image_side_not_a_multiple_of_14_is_a_clear_error(extractor, size):
    with pytest.raises(ValueError, match="multiple of 14"):
        extractor(torch.zeros(1, 3, size, size))


def test_position_embedding_interpolation():
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, DIM, generator=generator)
    # the checkpoint's own grid: unchanged
    torch.testing.assert_close(interpolate_position_embedding(pos, (37, 37)), pos)
    small = interpolate_position_embedding(pos, (4, 4))
    assert small.shape == (1, 17, DIM)
    torch.testing.assert_close(small[:, 0], pos[:, 0])  # class token kept
    # bicubic weights sum to one: a constant table stays constant
    flat = torch.full_like(pos, 0.7)
    torch.testing.assert_close(interpolate_position_embedding(flat, (8, 8)), flat[:, :65])
    # DINOv2 resizes with scale_factor (g + 0.1) / 37, not with size=g: the two differ
    by_size = F.interpolate(
        pos[:, 1:].reshape(1, 37, 37, DIM).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic"
    )
    assert not torch.allclose(small[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, 16, DIM))


def test_position_cache_is_refreshed_when_weights_are_loaded():
    model = DinoV2ViT().eval()
    image = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        before = model(image)
        state = model.state_dict()
        state["pos_embed"] = state["pos_embed"] + 1.0
        model.load_state_dict(state, strict=True)
        after = model(image)
        fresh = DinoV2ViT().eval()
        fresh.load_state_dict(state, strict=True)
        torch.testing.assert_close(after, fresh(image))
    assert not torch.allclose(before, after)


def test_attention_equals_torch_multihead_attention():
    """Our qkv layout (DINOv2's: [3, heads, head_dim] along the output) against nn.MHA."""
    torch.manual_seed(0)
    block = DinoV2ViT().blocks[0].attn
    reference = nn.MultiheadAttention(DIM, 6, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(block.qkv.weight)
        reference.in_proj_bias.copy_(block.qkv.bias)
        reference.out_proj.weight.copy_(block.proj.weight)
        reference.out_proj.bias.copy_(block.proj.bias)
        x = torch.randn(2, 17, DIM)
        want, _ = reference(x, x, x, need_weights=False)
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


def test_onnx_export_with_both_heads_matches_torch(extractor, tmp_path):
    """Random weights, 56 px (4x4 patches): PatchCore + global_reference in one graph."""
    size = 56
    generator = torch.Generator().manual_seed(0)
    fit = [torch.randn(4, 3, size, size, generator=generator)]
    patchcore = build_head("patchcore", HeadContext(extractor, size, {"coreset_ratio": 0.5}))
    reference = build_head("global_reference", HeadContext(extractor, size, {}))
    assert patchcore.feature_map_size(size) == (4, 4) == reference.feature_map_size(size)
    patchcore.fit(extractor, fit)
    reference.fit(extractor, fit)
    graph = InspectionGraph(extractor, [patchcore, reference])
    result = export_onnx(graph, tmp_path / "model.onnx", size, opset=18)
    assert result.max_abs_diff <= 1e-4 and result.opset >= 17
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    outputs = {o.name: o for o in model.graph.output}
    assert set(outputs) == {"patchcore_embeddings", "global_reference_map"}
    # the position table is a constant of the graph: no resize of it (PatchCore's own bilinear
    # resize of the deeper tap is the only Resize, and it is a no-op at equal strides)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert len(resizes) <= 1


def test_reference_rebuild_loads_the_state_strictly():
    """What load_reference does: assemble the architecture, build heads, load the state dict.
    The saved backbone differs from a fresh assembly (its position table is changed), so the
    rebuilt graph only agrees when the state and the position cache really follow the load."""
    size = 56
    extractor = build_backbone("dinov2_vits14", random_weights=True)
    with torch.no_grad():
        extractor.model.pos_embed.add_(torch.randn_like(extractor.model.pos_embed))
        extractor.model.blocks[3].mlp.fc1.weight.mul_(2.0)
    head = build_head("global_reference", HeadContext(extractor, size, {}))
    head.fit(extractor, [torch.randn(2, 3, size, size)])
    graph = InspectionGraph(extractor, [head])
    rebuilt_extractor = assemble_backbone("dinov2_vits14", "random", None)
    rebuilt = InspectionGraph(
        rebuilt_extractor,
        [build_head("global_reference", HeadContext(rebuilt_extractor, size, {}))],
    )
    image = torch.randn(1, 3, size, size)
    rebuilt.run(image)  # fills the position cache with the fresh table
    rebuilt.load_state_dict(graph.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt.run(image), graph.run(image))
