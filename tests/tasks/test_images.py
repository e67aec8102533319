"""Image decoding and preprocessing (tasks/images.py): channels, bit depths, DICOM, geometry,
pileups, corrupt files, seeded augmentation."""

import io

import numpy as np
import pytest
from PIL import Image

from tasks import demo_data, images


def _png(array, mode=None) -> bytes:
  buf = io.BytesIO()
  (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


# --- channels and bit depth ------------------------------------------------------------------
def test_gray_png_becomes_three_equal_channels():
  gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
  out = images.decode_image(_png(gray), "g.png")
  assert out.shape == (48, 64, 3) and out.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], gray)


def test_one_channel_array():
  one = np.full((5, 7, 1), 9, np.uint8)
  np.testing.assert_array_equal(images.to_rgb(one), np.full((5, 7, 3), 9, np.uint8))


def test_two_channel_gray_alpha_png_keeps_gray():
  la = np.zeros((10, 12, 2), np.uint8)
  la[..., 0] = 77
  la[..., 1] = 0  # fully transparent: the gray value must survive, not turn black
  out = images.decode_image(_png(la, "LA"), "la.png")
  assert out.shape == (10, 12, 3) and (out == 77).all()


def test_four_channel_rgba_png_drops_alpha():
  rgba = np.zeros((6, 8, 4), np.uint8)
  rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 128
  out = images.decode_image(_png(rgba, "RGBA"), "rgba.png")
  assert out.shape == (6, 8, 3)
  np.testing.assert_array_equal(out[0, 0], [10, 20, 30])


def test_sixteen_bit_png_is_min_max_scaled():
  img16 = np.zeros((20, 30), np.uint16)
  img16[:, 10:20] = 1000
  img16[:, 20:] = 4000  # a 12-bit range inside 16 bits: scaled to use all 8 bits
  data = _png(img16)
  assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit PNG
  out = images.decode_image(data, "d.png")
  assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
  assert out[0, 0, 0] == 0 and out[0, 25, 0] == 255 and out[0, 15, 0] == round(255 / 4)


def test_unsupported_channel_count_is_an_error():
  with pytest.raises(ValueError, match="unsupported image shape"):
    images.to_rgb(np.zeros((4, 4, 5), np.uint8), "x")


def test_palette_png():
  p = Image.new("P", (4, 3))
  p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
  p.putpixel((1, 1), 1)
  buf = io.BytesIO()
  p.save(buf, format="PNG")
  out = images.decode_image(buf.getvalue(), "p.png")
  np.testing.assert_array_equal(out[1, 1], [200, 100, 50])


# --- DICOM -----------------------------------------------------------------------------------
def test_dicom_16bit_window_and_monochrome1(tmp_path):
  img = np.zeros((16, 16), np.uint16)
  img[:, 8:] = 3000
  img[:4, :4] = 1000
  m2, m1 = tmp_path / "m2.dcm", tmp_path / "m1.dcm"
  demo_data.write_dicom(m2, img, uid_seed="a", window=(1500.0, 1000.0))  # window 1000..2000
  demo_data.write_dicom(m1, img, uid_seed="b", photometric="MONOCHROME1", window=(1500.0, 1000.0))
  a, b = images.decode_image(m2), images.decode_image(m1)
  assert a.shape == (16, 16, 3) and a.dtype == np.uint8
  assert a[10, 0, 0] == 0 and a[0, 12, 0] == 255 and a[0, 0, 0] == 0  # 1000 = window bottom
  np.testing.assert_array_equal(b, 255 - a)  # MONOCHROME1: low values are bright


def test_dicom_without_window_uses_min_max(tmp_path):
  img = np.full((8, 8), 100, np.uint16)
  img[0, 0] = 4095
  path = tmp_path / "x.dicom"
  demo_data.write_dicom(path, img, uid_seed="c")
  out = images.decode_image(path)
  assert out[0, 0, 0] == 255 and out[1, 1, 0] == 0


def test_jpeg_compressed_dicom(tmp_path):
  img = np.zeros((32, 48), np.uint8)
  img[8:24, 16:32] = 200
  path = tmp_path / "j.dcm"
  demo_data.write_dicom(path, img, uid_seed="d", jpeg=True)
  import pydicom

  assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
  out = images.decode_image(path)
  assert out.shape == (32, 48, 3)
  assert abs(int(out[16, 24, 0]) - 200) < 8 and out[2, 2, 0] < 8  # lossy but close


# --- corrupt inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_truncated_raster_names_the_file(tmp_path, kind):
  rng = np.random.default_rng(0)
  data = (_png if kind == "png" else _jpeg)(rng.integers(0, 255, (64, 64), dtype=np.uint8))
  path = tmp_path / f"broken.{kind}"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=f"broken.{kind}"):
    images.load_image(path)


def test_garbage_and_empty_files(tmp_path):
  (tmp_path / "noise.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
  (tmp_path / "empty.png").write_bytes(b"")
  for name in ("noise.jpg", "empty.png", "missing.png"):
    with pytest.raises(ValueError, match=name):
      images.decode_image(tmp_path / name)


def test_truncated_dicom_names_the_file(tmp_path):
  good = tmp_path / "good.dcm"
  demo_data.write_dicom(good, np.full((64, 64), 500, np.uint16), uid_seed="e")
  data = good.read_bytes()
  bad = tmp_path / "bad.dcm"
  bad.write_bytes(data[: len(data) - 3000])
  with pytest.raises(ValueError, match="bad.dcm"):
    images.decode_image(bad)
  corrupt = tmp_path / "corrupt.dicom"
  corrupt.write_bytes(b"\x00" * 128 + b"DICM" + b"\x13" * 100)
  with pytest.raises(ValueError, match="corrupt.dicom"):
    images.decode_image(corrupt)


def test_corrupt_jpeg_dicom_payload(tmp_path):
  path = tmp_path / "jp.dcm"
  noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
  demo_data.write_dicom(path, noise, uid_seed="f", jpeg=True)
  data = bytearray(path.read_bytes())
  sos, eoi = data.find(b"\xff\xda"), data.rfind(b"\xff\xd9")  # the embedded JPEG's scan
  assert 0 < sos < sos + 200 < eoi
  data[sos + 20 : sos + 60] = b"\xff" * 40  # garbage markers inside the entropy-coded data
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="jp.dcm"):
    images.decode_image(path)


# --- geometry --------------------------------------------------------------------------------
def test_resize_and_pad_keeps_aspect_and_centres():
  wide = np.full((50, 100, 3), 200, np.uint8)
  out = images.resize_and_pad(wide)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  rows = np.where(out[:, 112, 0] > 0)[0]
  assert rows.min() == 56 and rows.max() == 56 + 112 - 1  # 224 x 112 content, centred
  assert (out[:56] == 0).all() and (out[168:] == 0).all()
  tall = images.resize_and_pad(np.full((300, 60, 3), 9, np.uint8), size=100)
  cols = np.where(tall[50, :, 0] > 0)[0]
  assert tall.shape == (100, 100, 3) and cols.min() == 40 and cols.max() == 59


def test_load_image_real_size_png(tmp_path):
  path = tmp_path / "x.png"
  demo_data.write_image(path, np.full((30, 40), 128, np.uint8))
  out = images.load_image(path)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out[112, 112, 0] == 128


def test_pileup_layout():
  pileup = np.zeros((100, 221, 6), np.uint8)
  for c in range(6):
    pileup[..., c] = 10 * (c + 1)
  out = images.pileup_to_image(pileup)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  top, left = 12, 1  # (224 - 200) // 2, (224 - 221) // 2
  np.testing.assert_array_equal(out[top, left], [10, 20, 30])  # channels 1-3 on top
  np.testing.assert_array_equal(out[top + 100, left], [40, 50, 60])  # channels 4-6 below
  assert (out[:top] == 0).all() and (out[top + 200 :] == 0).all()
  assert (out[:, :left] == 0).all() and (out[:, left + 221 :] == 0).all()
  with pytest.raises(ValueError, match="C >= 6"):
    images.pileup_to_image(np.zeros((100, 221, 3), np.uint8))


# --- augmentation ----------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [images.augment_pad_ufes, images.augment_mammography])
def test_augmentation_is_a_pure_function_of_image_and_seed(fn):
  rng = np.random.default_rng(1)
  img = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
  before = img.copy()
  a, b = fn(img, 123), fn(img, 123)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(img, before)  # input untouched
  assert a.shape == img.shape and a.dtype == np.uint8
  outputs = {fn(img, s).tobytes() for s in range(8)}
  assert len(outputs) > 1


def test_augment_seed_is_stable():
  assert images.augment_seed("id-1", 0) == images.augment_seed("id-1", 0)
  assert images.augment_seed("id-1", 0) != images.augment_seed("id-1", 1)
  assert 0 <= images.augment_seed("x") < 2**63


def test_each_named_op_runs():
  img = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
  for op in set(images.PAD_UFES_OPS) | set(images.MAMMOGRAPHY_OPS):
    out = images.rand_augment(img, 5, (op,), num_ops=1)
    assert out.shape == img.shape and out.dtype == np.uint8
  assert (images.rand_augment(img, 0, ("invert",), 1) == 255 - img).all()


def _bundled(name):
  from pydicom.data import get_testdata_file

  path = get_testdata_file(name, download=False)  # files inside the pydicom wheel, offline
  assert path, f"pydicom test file {name} missing from the installed wheel"
  return path


def test_compressed_transfer_syntaxes_of_the_installed_stack():
  """JPEG 2000 lossless and RLE decode to exactly the uncompressed pixels; JPEG baseline YBR
  colour decodes to RGB."""
  reference = images.decode_image(_bundled("MR_small.dcm"))
  np.testing.assert_array_equal(
      images.decode_image(_bundled("MR_small_jp2klossless.dcm")), reference
  )
  np.testing.assert_array_equal(images.decode_image(_bundled("MR_small_RLE.dcm")), reference)
  rgb = images.decode_image(_bundled("SC_rgb_jpeg_dcmtk.dcm"))
  assert rgb.shape == (100, 100, 3) and rgb.dtype == np.uint8
  assert np.abs(rgb[5, 50].astype(int) - [255, 0, 0]).max() < 20  # top band is red


def test_unsupported_transfer_syntax_is_a_clear_error():
  # 12-bit JPEG Extended needs pylibjpeg or gdcm, which the pinned stack does not have
  with pytest.raises(ValueError, match=r"JPEG-lossy\.dcm: cannot decode DICOM"):
    images.decode_image(_bundled("JPEG-lossy.dcm"))
