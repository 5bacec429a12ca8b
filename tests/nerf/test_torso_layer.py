"""The torso layer above the training size (TorsoField.layer): a 2x render samples the layer rendered at the
training size instead of reading the hash grid between the pixels it was fitted at (which shows as a fine
checkerboard on shirts and necks); at the training size nothing changes."""
from __future__ import annotations

import torch

from avatar3d.nerf.fields import TorsoField, TorsoFieldConfig
from avatar3d.nerf.model import image_pixels


def _field() -> tuple[TorsoField, torch.Tensor]:
    torch.manual_seed(0)
    field = TorsoField(TorsoFieldConfig())
    with torch.no_grad():  # a table as rough as one fitted only at 32² pixel centres: every level carries detail
        field.encoding.table.uniform_(-1.0, 1.0)
    code = torch.rand(1, 2 * len(field.config.anchors)) * 2 - 1
    return field, code


def _checkerboard(image: torch.Tensor) -> float:
    """Mean |second difference| along x and y of an [S, S, C] image: pixel-to-pixel zigzag."""
    dx = image[:, 2:] - 2 * image[:, 1:-1] + image[:, :-2]
    dy = image[2:] - 2 * image[1:-1] + image[:-2]
    return float(dx.abs().mean() + dy.abs().mean())


@torch.no_grad()
def test_at_the_training_size_the_layer_is_the_field_itself() -> None:
    field, code = _field()
    uv = image_pixels(32) / 32
    rgb, alpha, _ = field(uv, code.expand(uv.shape[0], -1))
    premult, a = field.layer(uv, code, trained_size=32)
    assert torch.equal(a, alpha) and torch.equal(premult, alpha[:, None] * rgb)
    premult_none, _ = field.layer(uv, code)  # no training size known (training scores itself)
    assert torch.equal(premult_none, premult)


@torch.no_grad()
def test_a_larger_render_samples_the_trained_layer_and_shows_no_checkerboard() -> None:
    field, code = _field()
    small = field.layer(image_pixels(32) / 32, code, trained_size=32)
    small_image = torch.cat([small[0], small[1][:, None]], 1).T.reshape(1, 4, 32, 32)
    uv = image_pixels(128) / 128
    premult, alpha = field.layer(uv, code, trained_size=32)
    big = torch.cat([premult, alpha[:, None]], 1).view(128, 128, 4)
    # exactly the trained layer, magnified (pixel centres line up: align_corners=False)
    want = torch.nn.functional.interpolate(small_image, size=(128, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big, want[0].permute(1, 2, 0), atol=1e-5, rtol=0)
    # reading the grid between the trained pixels instead zigzags from pixel to pixel
    rgb_raw, alpha_raw, _ = field(uv, code.expand(uv.shape[0], -1))
    raw = torch.cat([alpha_raw[:, None] * rgb_raw, alpha_raw[:, None]], 1).view(128, 128, 4)
    assert _checkerboard(raw) > 3.0 * _checkerboard(big)
