"""S keeps Cellpose 3 CPnet's state-dict layout and ONNX-friendly shapes; G and Ds have the right I/O."""

from __future__ import annotations

import pytest
import torch

from cyclepose_deploy.nets.discriminators import PatchDiscriminator
from cyclepose_deploy.nets.renderer import Renderer
from cyclepose_deploy.nets.segmenter import Segmenter, make_style

# A sample of Cellpose 3 CPnet keys (nbase [2, 32, 64, 128, 256], nout 3) with their shapes.
CELLPOSE_KEYS = {
    "downsample.down.res_down_0.proj.0.weight": (2,),
    "downsample.down.res_down_0.proj.1.weight": (32, 2, 1, 1),
    "downsample.down.res_down_0.conv.conv_0.2.weight": (32, 2, 3, 3),
    "downsample.down.res_down_3.conv.conv_3.2.weight": (256, 256, 3, 3),
    "upsample.up.res_up_3.conv.conv_0.2.weight": (256, 256, 3, 3),
    "upsample.up.res_up_3.conv.conv_1.full.weight": (256, 256),
    "upsample.up.res_up_0.conv.conv_1.full.weight": (32, 256),
    "upsample.up.res_up_0.conv.conv_3.conv.2.weight": (32, 32, 3, 3),
    "upsample.up.res_up_0.proj.1.weight": (32, 64, 1, 1),
    "output.0.weight": (32,),
    "output.2.weight": (3, 32, 1, 1),
    "diam_mean": (1,),
    "diam_labels": (1,),
}


def test_segmenter_state_dict_matches_cellpose3_layout() -> None:
    state = Segmenter(2).state_dict()
    for key, shape in CELLPOSE_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 313  # CPnet's count, BatchNorm buffers included
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) > 6.5e6


@pytest.mark.parametrize(("in_channels", "size"), [(1, 64), (2, 96)])
def test_segmenter_output_shape_any_multiple_of_eight(in_channels: int, size: int) -> None:
    net = Segmenter(in_channels, [8, 16, 32, 64]).eval()
    with torch.no_grad():
        out = net(torch.rand(2, in_channels, size, size + 16))
    assert out.shape == (2, 3, size, size + 16)


def test_style_is_unit_norm_spatial_mean() -> None:
    features = torch.rand(3, 16, 5, 7)
    style = make_style(features)
    expected = features.mean(dim=(2, 3))
    assert torch.allclose(style.norm(dim=1), torch.ones(3))
    assert torch.allclose(style, expected / expected.norm(dim=1, keepdim=True))


def test_segmenter_rejects_three_channels() -> None:
    with pytest.raises(ValueError):
        Segmenter(3)


@pytest.mark.parametrize("channels", [1, 2])
def test_renderer_and_discriminators_shapes(channels: int) -> None:
    image = Renderer(channels, 8)(torch.rand(2, 3, 64, 64))
    assert image.shape == (2, channels, 64, 64)
    scores = PatchDiscriminator(channels, 8)(image)
    assert scores.ndim == 4 and scores.shape[1] == 1 and scores.shape[-1] > 1
    assert PatchDiscriminator(3, 8)(torch.rand(2, 3, 64, 64)).shape == scores.shape
