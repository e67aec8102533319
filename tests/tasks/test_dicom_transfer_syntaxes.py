"""DICOM as clinics store it: every pydicom test file with pixel data in a transfer syntax pydicom
decodes gives our model input from the same pixels; JPEG Lossless, JPEG-LS, 12-bit JPEG and
JPEG 2000 decode through the pinned pylibjpeg plug-ins; files without pixel data, or truncated,
give a clear error naming the file."""

import pathlib

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import get_decoder

from tasks import images

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
PYLIBJPEG_SYNTAXES = (
    JPEG_LOSSLESS_14,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_EXTENDED_12BIT,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    RLE,
)

# The pydicom test files whose pixel data pydicom itself cannot decode (malformed on purpose):
# ours must fail with a clear error as well, never return an image.
BROKEN = {
    "MR_truncated.dcm",  # truncated pixel data
    "JPEG-lossy.dcm",  # a 12-bit JPEG whose scan header libjpeg rejects
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "badVR.dcm",
    "nested_priv_SQ.dcm",
    "meta_missing_tsyntax.dcm",
}


# The files pydicom ships (pydicom.data.get_testdata_files would also try to download the ones
# it lists by URL only; tests stay offline).
TEST_FILES = pathlib.Path(pydicom.data.__file__).parent / "test_files"


def get_testdata_file(name: str) -> pathlib.Path:
  return TEST_FILES / name


def _files():
  return sorted(p for p in TEST_FILES.glob("*.dcm") if p.is_file())


def _dataset(path):
  return pydicom.dcmread(path, force=True)


def test_pylibjpeg_decoders_are_installed():
  for uid in PYLIBJPEG_SYNTAXES:
    decoder = get_decoder(uid)
    assert decoder.is_available and "pylibjpeg" in decoder.available_plugins, uid


def test_the_sweep_covers_the_transfer_syntaxes_clinics_use():
  syntaxes = set()
  for path in _files():
    ds = _dataset(path)
    if "PixelData" in ds and path.name not in BROKEN:
      syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
  for uid in (
      JPEG_LOSSLESS_SV1,
      JPEG_LS_LOSSLESS,
      JPEG_LS_NEAR_LOSSLESS,
      JPEG_EXTENDED_12BIT,
      JPEG_2000_LOSSLESS,
      JPEG_2000,
      RLE,
  ):
    assert uid in syntaxes, uid


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_pydicom_test_file(path):
  ds = _dataset(path)
  has_pixels = "PixelData" in ds
  if not has_pixels or path.name in BROKEN:
    with pytest.raises(ValueError, match=rf"{path.name}: cannot decode DICOM: \w+"):
      images.decode_image(path)
    if has_pixels:  # pydicom fails on it too: nothing we could have decoded
      with pytest.raises(Exception):
        ds.pixel_array  # noqa: B018
    return
  ours = images.decode_image(path)
  assert ours.dtype == np.uint8 and ours.ndim == 3 and ours.shape[-1] == 3
  # pydicom's pixels from the decoder we prefer (Pillow for 8-bit JPEG: it rejects corrupt
  # streams that libjpeg decodes to noise), else from its default choice.
  default = ds.pixel_array
  preferred = default
  if str(ds.file_meta.TransferSyntaxUID) in (JPEG_BASELINE, JPEG_EXTENDED_12BIT):
    try:
      with_pillow = _dataset(path)
      with_pillow.pixel_array_options(decoding_plugin="pillow")
      preferred = with_pillow.pixel_array
    except (RuntimeError, NotImplementedError):  # 12-bit: Pillow does not support it
      pass
  np.testing.assert_array_equal(ours, images.dicom_to_rgb(preferred, ds, path.name))
  # Lossy JPEG decoders round their inverse DCT differently: within 3 grey levels.
  other = images.dicom_to_rgb(default, ds, path.name).astype(int)
  assert np.abs(ours.astype(int) - other).max() <= 3


# Lossless encodings of the same image: ours from the compressed file equals ours from a copy
# decoded by another decoder (pydicom's native reader or its own RLE decoder).
LOSSLESS_PAIRS = [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless (pylibjpeg-libjpeg)
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless (openjpeg or Pillow)
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),  # JPEG Lossless process 14 SV1 vs RLE
    ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm"),
]


@pytest.mark.parametrize("compressed,reference", LOSSLESS_PAIRS)
def test_lossless_syntaxes_decode_to_the_reference_pixels(compressed, reference):
  np.testing.assert_array_equal(
      images.decode_image(get_testdata_file(compressed)),
      images.decode_image(get_testdata_file(reference)),
  )
