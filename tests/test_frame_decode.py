"""Frame decoding and colour jitter: what every clip read goes through (data_pipelines/transforms.py)."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.transforms import color_matrix, decode_crop_resize


def test_color_matrix_is_brightness_then_contrast_then_saturation():
    gray = np.asarray([0.299, 0.587, 0.114])
    x = np.random.default_rng(0).uniform(70, 180, (16, 16, 3))  # stays in range: no clipping
    b, c, s = 1.1, 0.85, 1.25
    x1 = b * x
    m = (x1 @ gray).mean()
    x2 = (x1 - m) * c + m
    g = (x2 @ gray)[..., None]
    x3 = (x2 - g) * s + g
    mat = np.asarray(color_matrix(b, c, s, float((x @ gray).mean()))).reshape(3, 4)
    np.testing.assert_allclose(x @ mat[:, :3].T + mat[:, 3], x3, rtol=1e-6)
    np.testing.assert_allclose(color_matrix(1, 1, 1, 77.0), [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], atol=1e-12)


def test_decode_crop_resize_uses_the_box_and_identity_jitter(tmp_path):
    import io

    from PIL import Image

    px = np.zeros((64, 96, 3), np.uint8)
    px[:, :48] = (200, 30, 30)  # left half red, right half blue
    px[:, 48:] = (30, 30, 200)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=95)
    left = decode_crop_resize(buf.getvalue(), (0.0, 0.0, 0.4, 1.0), 16).astype(int)
    right = decode_crop_resize(buf.getvalue(), (0.6, 0.0, 1.0, 1.0), 16, (1.0, 1.0, 1.0)).astype(int)
    assert left.shape == right.shape == (16, 16, 3)
    assert np.abs(left - [200, 30, 30]).max() <= 6 and np.abs(right - [30, 30, 200]).max() <= 6
    # draft downscaling kicks in for small outputs and keeps the colours
    tiny = decode_crop_resize(buf.getvalue(), (0.0, 0.0, 0.4, 1.0), 4).astype(int)
    assert np.abs(tiny - [200, 30, 30]).max() <= 6


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_decode_rgb_matches_pillow_and_shrinks_only_by_2x_or_more(mode):
    """libjpeg-turbo (simplejpeg) decodes what Pillow does, within JPEG rounding; CMYK goes
    through Pillow; the DCT shrink is taken only when it halves the frame or more."""
    import io

    from PIL import Image

    from data_pipelines.transforms import decode_rgb, decode_rgb_array

    rng = np.random.default_rng(0)
    px = np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(px).convert(mode).save(buf, format="JPEG", quality=95)
    jpeg = buf.getvalue()
    want = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    got = decode_rgb(jpeg)
    assert got.mode == "RGB" and got.size == (128, 96)
    assert np.abs(np.asarray(got).astype(int) - want).mean() < 1.0
    array = decode_rgb_array(jpeg)  # the same pixels without the PIL image
    assert array.dtype == np.uint8 and array.shape == (96, 128, 3)
    np.testing.assert_array_equal(array, np.asarray(got))
    assert decode_rgb(jpeg, (64, 48)).size == (64, 48)  # 2x: the decoder's DCT scaling
    assert decode_rgb(jpeg, (65, 48)).size == (128, 96)  # 1.97x: full size, resized later
    with pytest.raises(OSError):  # Pillow's error for a truncated file, which LoadClip catches
        decode_rgb(jpeg[: len(jpeg) // 2]).load()
    with pytest.raises(OSError):
        decode_rgb_array(jpeg[: len(jpeg) // 2])
