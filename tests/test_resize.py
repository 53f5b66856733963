"""Resize policies against oracles computed here with numpy, not through the tokenizer's own fitting:
an exact crop where no resampling is involved (coefficients equal), and 2x box averages where the
photo is halved (decoded pixels within a few levels; the other policy is ten times farther)."""

import io

import numpy as np
import pytest
from jpeg_reference import photo_pixels
from PIL import Image

from tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.jpeg.io import read_coefficients


def tok_for(**kw) -> JpegDctTokenizer:
    return JpegDctTokenizer(JpegDctConfig(quality=90, subsampling="4:4:4", **kw))


def photo(rows: int, cols: int) -> np.ndarray:
    return np.ascontiguousarray(photo_pixels("astronaut")[200:200 + rows, 100:100 + cols])


@pytest.mark.parametrize("shape, crop", [((32, 48), np.s_[:, 8:40]), ((48, 32), np.s_[8:40, :])])
def test_center_crop_at_scale_one_is_the_middle_of_the_image(shape, crop):
    """The input already has the target's short side: center_crop cuts the middle, pixel for pixel."""
    px = photo(*shape)
    tok = tok_for(size=(32, 32))
    got = read_coefficients(tok.decode(tok.encode(px)))
    assert got == tok_for(size=None).coefficients(px[crop])       # the same JPEG as the cut pixels


def box_mean(px: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """(H, W, 3) -> (H / fy, W / fx, 3): the mean of each fy x fx block."""
    h, w = px.shape[0] // fy, px.shape[1] // fx
    return px.astype(np.float64).reshape(h, fy, w, fx, 3).mean(axis=(1, 3))


def decoded(tok: JpegDctTokenizer, px: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(tok.decode(tok.encode(px))))).astype(np.float64)


@pytest.mark.parametrize("size, kept, stretch_box, one_off", [
    ((32, 32), np.s_[:, 32:96], (2, 4), np.s_[:, 30:94]),
    ((16, 64), np.s_[16:48, :], (4, 2), np.s_[14:46, :]),    # size is (rows, columns): a swap shows
])
def test_policies_halve_a_wide_photo_as_their_names_say(size, kept, stretch_box, one_off):
    """64x128 to size. center_crop: scale by 1/2 (to 32x64) and keep the middle, i.e. the 2x2 means
    of the original's `kept` region (columns 32..95 for 32x32, rows 16..47 for 16x64). stretch: the
    `stretch_box` means of the whole photo."""
    px = photo(64, 128)
    crop, stretch = box_mean(px[kept], 2, 2), box_mean(px, *stretch_box)
    assert np.abs(crop - stretch).mean() > 30                      # the oracles tell the policies apart
    got_crop = decoded(tok_for(size=size, resize="center_crop"), px)
    got_stretch = decoded(tok_for(size=size, resize="stretch"), px)
    assert got_crop.shape == got_stretch.shape == (*size, 3)
    assert np.abs(got_crop - crop).mean() < 8                      # Lanczos vs box, and JPEG q90: ~4
    assert np.abs(got_stretch - stretch).mean() < 8
    off = box_mean(px[one_off], 2, 2)                              # a crop one output pixel off
    assert np.abs(got_crop - off).mean() > 2 * np.abs(got_crop - crop).mean()


def test_vqvae_tokenizer_crops_the_middle_too():
    from tokenizer.vqvae.model import VqConfig
    from tokenizer.vqvae.tokenizer import VqVaeTokenizer

    tok = VqVaeTokenizer(VqConfig(size=(32, 32), codebook_size=256, code_dim=4, channels=8))
    px = photo(32, 48)
    assert np.array_equal(tok.pixels(px), px[:, 8:40])
    assert np.array_equal(tok.pixels(photo(48, 32)), photo(48, 32)[8:40])
