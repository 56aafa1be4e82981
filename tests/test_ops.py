"""Resize, pixel shuffle and pooling against hand-worked PyTorch values and jax.image.resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edvr_jax.ops import avg_pool, max_pool, pixel_shuffle, upsample_bilinear


def _row(values):
    return jnp.asarray(values, jnp.float32).reshape(1, 1, -1, 1)


def test_upsample_x2_by_hand():
    # torch: F.interpolate(tensor([[[[0., 1.]]]]), scale_factor=2, mode='bilinear') -> [0, .25, .75, 1]
    out = upsample_bilinear(_row([0.0, 1.0]), 2)
    np.testing.assert_allclose(np.asarray(out)[0, 0, :, 0], [0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(np.asarray(out)[0, 1, :, 0], [0, 0.25, 0.75, 1.0])  # rows replicate


def test_upsample_x4_by_hand():
    # sources (d + .5) / 4 - .5 = -.375 (clamped to 0), -.125 (clamped), .125, .375, .625, .875, 1.125, 1.375
    out = upsample_bilinear(_row([0.0, 4.0]), 4)
    np.testing.assert_allclose(np.asarray(out)[0, 0, :, 0], [0, 0, 0.5, 1.5, 2.5, 3.5, 4, 4])


@pytest.mark.parametrize("scale", [2, 4])
def test_upsample_matches_jax_image_resize(scale):
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    ref = jax.image.resize(x, (2, 5 * scale, 7 * scale, 3), method="bilinear")
    np.testing.assert_allclose(np.asarray(upsample_bilinear(x, scale)), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_pixel_shuffle_channel_order():
    # torch PixelShuffle(2): out[c, 2h + i, 2w + j] = in[c * 4 + i * 2 + j, h, w]
    x = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(1, 2, 3, 8)
    out = np.asarray(pixel_shuffle(x, 2))
    assert out.shape == (1, 4, 6, 2)
    for c in range(2):
        for h in range(2):
            for w in range(3):
                for i in range(2):
                    for j in range(2):
                        assert out[0, 2 * h + i, 2 * w + j, c] == x[0, h, w, c * 4 + i * 2 + j]
    with pytest.raises(ValueError, match="divisible by 4"):
        pixel_shuffle(x[..., :6], 2)


def test_pools_by_hand():
    x = jnp.arange(1, 17, dtype=jnp.float32).reshape(1, 4, 4, 1)  # 1..16 row-major
    mx = np.asarray(max_pool(x))[0, :, :, 0]
    av = np.asarray(avg_pool(x))[0, :, :, 0]
    np.testing.assert_array_equal(mx, [[6, 8], [14, 16]])
    # count_include_pad: the top-left window holds 1, 2, 5, 6 and five zeros of padding -> 14 / 9
    np.testing.assert_allclose(av, [[14 / 9, (2 + 3 + 4 + 6 + 7 + 8) / 9],
                                    [(5 + 6 + 9 + 10 + 13 + 14) / 9, (6 + 7 + 8 + 10 + 11 + 12 + 14 + 15 + 16) / 9]])
    # Padding never wins a max, even for all-negative input (windows: rows/cols {-1,0,1}, {1,2,3}).
    np.testing.assert_array_equal(np.asarray(max_pool(-x))[0, :, :, 0], [[-1, -2], [-5, -6]])


def test_pools_odd_size():
    x = jnp.ones((1, 5, 3, 2))
    assert max_pool(x).shape == (1, 3, 2, 2)
    assert avg_pool(x).shape == (1, 3, 2, 2)
    assert float(avg_pool(x)[0, 0, 0, 0]) == pytest.approx(4 / 9)
