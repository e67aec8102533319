"""Image decoding and preprocessing for MultiMedBench: files → ``uint8[224, 224, 3]``.

The model takes ``uint8[B, N, 224, 224, 3]`` and normalises inside (one place for the ViT's
pixel scaling), so this module ends at uint8 RGB. Steps, the same for every dataset:

1. decode: PNG/JPEG with Pillow; DICOM with pydicom (compressed transfer syntaxes through its decoder
   plug-ins: Pillow for 8-bit JPEG and some JPEG 2000; pylibjpeg, pinned with medpalm, for JPEG
   Lossless (process 14), JPEG-LS lossless and near-lossless, 12-bit JPEG Extended, JPEG 2000
   and RLE), modality LUT (rescale),
   then the file's first VOI window (WindowCenter/WindowWidth) or the pixel min–max to 8 bits,
   MONOCHROME1 inverted so that bright = dense everywhere;
2. to RGB: 2-D or 1-channel → repeated 3 times; 2 channels (gray + alpha) → gray; 4 channels
   (RGBA) → RGB (alpha dropped: medical images carry no meaning in it, and compositing would darken
   the image); 16-bit / float input → min–max to 8 bits;
3. aspect-preserving resize so the longer side is ``size``, then centred zero padding to a square.

DeepVariant pileups ``uint8[100, 221, 6]`` become ``uint8[200, 221, 3]`` (channels 1–3 stacked
over 4–6) and are padded, not resized, to 224×224.

A file that cannot be decoded (corrupt, truncated, not an image) raises ValueError naming it.

Augmentations (train time, where the paper names them) are pure functions of (image, seed): the
same seed gives the same output, so a resumed input pipeline reproduces its batches. Derive the
seed with :func:`augment_seed` from the example id and the epoch, never from global state.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib

import numpy as np
from PIL import Image, ImageEnhance, ImageFile, ImageOps

IMAGE_SIZE = 224
PILEUP_CHANNELS = 6
DICOM_SUFFIXES = (".dcm", ".dicom")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not decode half-grey


# --- decoding --------------------------------------------------------------------------------
def _is_dicom(data: bytes, name: str) -> bool:
  return data[128:132] == b"DICM" or name.lower().endswith(DICOM_SUFFIXES)


def _scale_to_uint8(
    arr: np.ndarray, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
  """Linear map of [lo, hi] (default: the array's min, max) to uint8 [0, 255], clipped."""
  arr = arr.astype(np.float64)
  lo = float(arr.min()) if lo is None else lo
  hi = float(arr.max()) if hi is None else hi
  if hi <= lo:
    return np.zeros(arr.shape, np.uint8)
  out = (arr - lo) * (255.0 / (hi - lo))
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_uint8(arr: np.ndarray) -> np.ndarray:
  """Any integer/float array → uint8; uint8 passes through, wider types are min–max scaled."""
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == np.bool_:
    return arr.astype(np.uint8) * 255
  return _scale_to_uint8(arr)


def to_rgb(arr: np.ndarray, name: str = "<array>") -> np.ndarray:
  """``[H, W]`` or ``[H, W, C]`` (C ∈ 1, 2, 3, 4; any dtype) → ``uint8[H, W, 3]``."""
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(
        f"{name}: unsupported image shape {arr.shape}; expected [H, W] or "
        "[H, W, C] with C in 1, 2, 3, 4"
    )
  channels = arr.shape[-1]
  if channels == 2:  # gray + alpha: keep the gray
    arr = arr[..., :1]
  elif channels == 4:  # RGBA: keep RGB
    arr = arr[..., :3]
  arr = to_uint8(arr)
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return np.ascontiguousarray(arr)


def _pil_to_array(img: Image.Image) -> np.ndarray:
  """Pillow image → numpy with its channels explicit (16-bit modes kept as uint16/int32)."""
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
    img = img.convert("RGB")
  elif img.mode == "1":
    img = img.convert("L")
  return np.asarray(img)


def decode_raster(data: bytes, name: str) -> np.ndarray:
  """PNG/JPEG/... bytes → ``uint8[H, W, 3]``; ValueError naming ``name`` if undecodable."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      arr = _pil_to_array(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"{name}: cannot decode image: {e}") from None
  return to_rgb(arr, name)


def decode_dicom(data: bytes, name: str) -> np.ndarray:
  """DICOM bytes → ``uint8[H, W, 3]`` (first frame; windowed; MONOCHROME1 inverted)."""
  import pydicom

  try:
    ds = pydicom.dcmread(io.BytesIO(data), force=name.lower().endswith(DICOM_SUFFIXES))
    arr = dicom_pixel_array(ds)
  except Exception as e:  # pydicom raises many types for corrupt/truncated/unsupported data
    raise ValueError(f"{name}: cannot decode DICOM: {type(e).__name__}: {e}") from None
  return dicom_to_rgb(arr, ds, name)


# JPEG Baseline (process 1) and Extended (processes 2 & 4).
_PILLOW_FIRST = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def dicom_pixel_array(ds) -> np.ndarray:
  """``ds.pixel_array``, 8-bit JPEG decoded by Pillow first.

  pylibjpeg's libjpeg returns pixels for some corrupt 8-bit JPEG streams without an error where
  Pillow raises one, and a corrupt file must fail, not become noise. What Pillow does not
  support (12-bit JPEG Extended) and every other syntax (JPEG Lossless, JPEG-LS, JPEG 2000 —
  where openjpeg reads files Pillow rejects —, RLE) go to pydicom's default choice among the
  installed decoders, pylibjpeg among them.
  """
  syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
  if syntax in _PILLOW_FIRST:
    ds.pixel_array_options(decoding_plugin="pillow")
    try:
      return ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
      if "does not support" not in str(e):
        raise
    finally:
      ds.pixel_array_options()
  return ds.pixel_array


def dicom_to_rgb(arr: np.ndarray, ds, name: str = "<dicom>") -> np.ndarray:
  """A dataset's decoded ``pixel_array`` → ``uint8[H, W, 3]``: first frame, palette applied,
  modality LUT, the first VOI window (else the VOI LUT, else min–max), MONOCHROME1 inverted."""
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
  if frames > 1:
    arr = arr[0]
  photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
  if photometric == "PALETTE COLOR":
    from pydicom.pixels import apply_color_lut

    arr = apply_color_lut(arr, ds)  # uint16 RGB from the palette
  if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM: pydicom already gives RGB
    return to_rgb(arr, name)
  arr = apply_modality_lut(arr, ds)
  if "WindowCenter" in ds and "WindowWidth" in ds:
    center = float(np.ravel(ds.WindowCenter)[0])
    width = float(np.ravel(ds.WindowWidth)[0])
    out = _scale_to_uint8(arr, center - width / 2, center + width / 2)
  elif "VOILUTSequence" in ds:
    out = _scale_to_uint8(apply_voi_lut(arr, ds))
  elif arr.dtype == np.uint8:
    out = arr
  else:
    out = _scale_to_uint8(arr)
  if photometric == "MONOCHROME1":
    out = 255 - out
  return to_rgb(out, name)


def decode_image(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
  """A file path or bytes (PNG, JPEG, DICOM, ...) → ``uint8[H, W, 3]`` at native size."""
  if isinstance(source, (bytes, bytearray)):
    data, name = bytes(source), name or "<bytes>"
  else:
    name = name or str(source)
    try:
      data = pathlib.Path(source).read_bytes()
    except OSError as e:
      raise ValueError(f"{name}: cannot read image file: {e}") from None
  if not data:
    raise ValueError(f"{name}: empty image file")
  return decode_dicom(data, name) if _is_dicom(data, name) else decode_raster(data, name)


# --- geometry --------------------------------------------------------------------------------
def pad_to_square(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """Centred zero padding of ``uint8[h, w, C]`` (h, w ≤ size) to ``uint8[size, size, C]``."""
  h, w = image.shape[:2]
  if h > size or w > size:
    raise ValueError(f"cannot pad {h}x{w} to {size}x{size}")
  out = np.zeros((size, size) + image.shape[2:], image.dtype)
  top, left = (size - h) // 2, (size - w) // 2
  out[top : top + h, left : left + w] = image
  return out


def resize_and_pad(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """``uint8[H, W, 3]`` → ``uint8[size, size, 3]``: longer side scaled to ``size`` (bicubic,
  aspect kept), then centred zero padding."""
  h, w = image.shape[:2]
  scale = size / max(h, w)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  if (nh, nw) != (h, w):
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
  return pad_to_square(image, size)


def load_image(
    source: str | os.PathLike | bytes, size: int = IMAGE_SIZE, name: str | None = None
) -> np.ndarray:
  """Decode + resize + pad: the model input ``uint8[size, size, 3]`` of one image file."""
  return resize_and_pad(decode_image(source, name), size)


def pileup_to_image(pileup: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """DeepVariant pileup ``uint8[H, W, C]`` (C ≥ 6; usually [100, 221, 6]) →
  ``uint8[size, size, 3]``: channels 1–3 stacked over channels 4–6 (``[2H, W, 3]``), then
  centred zero padding (or, if ``2H`` or ``W`` exceeds ``size``, aspect-preserving resize)."""
  if pileup.ndim != 3 or pileup.shape[-1] < PILEUP_CHANNELS:
    raise ValueError(f"pileup of shape {pileup.shape}: expected [H, W, C] with C >= 6")
  stacked = np.concatenate([pileup[..., 0:3], pileup[..., 3:6]], axis=0)
  stacked = to_uint8(stacked)
  if max(stacked.shape[:2]) > size:
    return resize_and_pad(stacked, size)
  return pad_to_square(stacked, size)


# --- augmentation ----------------------------------------------------------------------------
def augment_seed(example_id: str, epoch: int = 0, salt: str = "") -> int:
  """A 63-bit seed from an example id and epoch (stable across processes and runs)."""
  digest = hashlib.sha256(f"{salt}/{epoch}/{example_id}".encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 1


def _affine(img: Image.Image, matrix) -> Image.Image:
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=0)


def _signed(rng: np.random.Generator, hi: float) -> float:
  return float(rng.uniform(-hi, hi))


# op name → f(PIL image, rng) → PIL image. Magnitudes follow RandAugment's usual ranges (the paper
# names the ops, not their magnitudes).
_OPS = {
    "autocontrast": lambda im, r: ImageOps.autocontrast(im),
    "equalize": lambda im, r: ImageOps.equalize(im),
    "invert": lambda im, r: ImageOps.invert(im),
    "rotate": lambda im, r: im.rotate(_signed(r, 30.0), resample=Image.BILINEAR, fillcolor=0),
    "posterize": lambda im, r: ImageOps.posterize(im, int(r.integers(4, 9))),
    "solarize": lambda im, r: ImageOps.solarize(im, int(r.integers(128, 256))),
    "color": lambda im, r: ImageEnhance.Color(im).enhance(1.0 + _signed(r, 0.9)),
    "contrast": lambda im, r: ImageEnhance.Contrast(im).enhance(1.0 + _signed(r, 0.9)),
    "shear_x": lambda im, r: _affine(im, (1, _signed(r, 0.3), 0, 0, 1, 0)),
    "shear_y": lambda im, r: _affine(im, (1, 0, 0, _signed(r, 0.3), 1, 0)),
    "translate_x": lambda im, r: _affine(im, (1, 0, _signed(r, 0.15) * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, r: _affine(im, (1, 0, 0, 0, 1, _signed(r, 0.15) * im.size[1])),
}
PAD_UFES_OPS = (
    "autocontrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "color",
    "contrast",
)
MAMMOGRAPHY_OPS = (
    "contrast",
    "equalize",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def rand_augment(
    image: np.ndarray, seed: int, ops: tuple[str, ...], num_ops: int = 2
) -> np.ndarray:
  """RandAugment over ``ops``: ``num_ops`` distinct ops, each with a random magnitude, all drawn
  from ``seed``. ``uint8[H, W, 3]`` → ``uint8[H, W, 3]``; a pure function of (image, seed)."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
  rng = np.random.default_rng(seed)
  chosen = rng.choice(len(ops), size=min(num_ops, len(ops)), replace=False)
  img = Image.fromarray(image)
  for i in chosen:
    img = _OPS[ops[int(i)]](img, rng)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def augment_pad_ufes(image: np.ndarray, seed: int) -> np.ndarray:
  """PAD-UFES-20 train augmentation (the paper's RandAugment op list)."""
  return rand_augment(image, seed, PAD_UFES_OPS)


def augment_mammography(image: np.ndarray, seed: int) -> np.ndarray:
  """VinDr-Mammo / CBIS-DDSM train augmentation (contrast, equalize, rotate, shear, translate)."""
  return rand_augment(image, seed, MAMMOGRAPHY_OPS)
