"""TFRecord files and ``tf.train.Example`` protos, read without TensorFlow.

TFRecord framing, per record: ``uint64 length`` (little endian), ``uint32 masked_crc32c(length)``,
``length`` bytes of data, ``uint32 masked_crc32c(data)``. Files may be GZIP-compressed (detected
from the magic bytes, whatever the name). The length CRC is always checked (cheap; catches a
misaligned or non-TFRecord file); the data CRC is checked with ``verify_data_crc=True`` (pure
Python, about 0.1 s per 130 kB pileup, so off by default — gzip's own CRC already guards
compressed files).

``tf.train.Example`` is decoded from the protobuf wire format by hand (5 message types:
Example{features=1} → Features{feature=1: map<string, Feature>} → Feature{bytes_list=1,
float_list=2, int64_list=3} → *List{value=1}); the result is ``dict[str, list[bytes] |
list[float] | list[int]]``.
"""

from __future__ import annotations

import gzip
import pathlib
import struct
from typing import Iterator


class TFRecordError(ValueError):
  """A corrupt TFRecord file or Example proto; the message names file and record."""


# --- CRC32C (Castagnoli), table driven -------------------------------------------------------
def _make_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- framing ---------------------------------------------------------------------------------
def _open(path: pathlib.Path):
  with open(path, "rb") as f:
    magic = f.read(2)
  return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def iter_records(path, *, verify_data_crc: bool = False) -> Iterator[bytes]:
  """The raw records of one TFRecord file (plain or GZIP)."""
  path = pathlib.Path(path)
  with _open(path) as f:
    index = 0
    while True:
      try:
        header = f.read(12)
      except (OSError, EOFError) as e:  # gzip stream corrupt or truncated
        raise TFRecordError(f"{path}: record {index}: corrupt gzip stream: {e}") from None
      if not header:
        return
      if len(header) < 12:
        raise TFRecordError(f"{path}: record {index}: truncated header")
      length, length_crc = struct.unpack("<QI", header)
      if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(
            f"{path}: record {index}: length CRC mismatch " "(not a TFRecord file, or corrupt)"
        )
      try:
        data = f.read(length)
        footer = f.read(4)
      except (OSError, EOFError) as e:
        raise TFRecordError(f"{path}: record {index}: corrupt gzip stream: {e}") from None
      if len(data) < length or len(footer) < 4:
        raise TFRecordError(f"{path}: record {index}: truncated data")
      if verify_data_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
        raise TFRecordError(f"{path}: record {index}: data CRC mismatch")
      yield data
      index += 1


# --- protobuf wire format --------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("truncated varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise ValueError("varint too long")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
  """(field number, wire type, value) of a serialized message; value is int or bytes."""
  pos = 0
  n = len(buf)
  while pos < n:
    key, pos = _varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 1:
      if pos + 8 > n:
        raise ValueError("truncated fixed64")
      value, pos = buf[pos : pos + 8], pos + 8
    elif wire == 2:
      size, pos = _varint(buf, pos)
      if pos + size > n:
        raise ValueError(f"field {field}: length {size} runs past the message")
      value, pos = buf[pos : pos + size], pos + size
    elif wire == 5:
      if pos + 4 > n:
        raise ValueError("truncated fixed32")
      value, pos = buf[pos : pos + 4], pos + 4
    else:
      raise ValueError(f"unsupported wire type {wire} (field {field})")
    yield field, wire, value


def _signed64(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes) -> list:
  for kind, wire, payload in iter_fields(buf):
    if wire != 2:
      continue
    values: list = []
    for field, vwire, v in iter_fields(payload):
      if field != 1:
        continue
      if kind == 1:  # BytesList
        values.append(bytes(v))
      elif kind == 2:  # FloatList: packed (wire 2) or not (wire 5)
        values.extend(
            struct.unpack(f"<{len(v) // 4}f", v) if vwire == 2 else struct.unpack("<f", v)
        )
      elif kind == 3:  # Int64List: packed varints (wire 2) or one varint (wire 0)
        if vwire == 2:
          pos = 0
          while pos < len(v):
            x, pos = _varint(v, pos)
            values.append(_signed64(x))
        else:
          values.append(_signed64(v))
    return values
  return []  # a Feature with no kind set


def parse_example(buf: bytes) -> dict[str, list]:
  """A serialized ``tf.train.Example`` → {feature name: list of values}."""
  features: dict[str, list] = {}
  for field, wire, payload in iter_fields(buf):
    if field != 1 or wire != 2:
      continue
    for entry_field, entry_wire, entry in iter_fields(payload):
      if entry_field != 1 or entry_wire != 2:
        continue
      key, value = None, b""
      for f, w, v in iter_fields(entry):
        if f == 1 and w == 2:
          key = bytes(v).decode("utf-8")
        elif f == 2 and w == 2:
          value = v
      if key is None:
        raise ValueError("feature map entry without a key")
      features[key] = _parse_feature(value)
  return features


def iter_examples(path, *, verify_data_crc: bool = False) -> Iterator[tuple[int, dict]]:
  """(record index, parsed Example) of each record of a TFRecord file."""
  for index, data in enumerate(iter_records(path, verify_data_crc=verify_data_crc)):
    try:
      yield index, parse_example(data)
    except ValueError as e:
      raise TFRecordError(f"{path}: record {index}: malformed tf.train.Example: {e}") from None


# --- writing (used by tasks/demo_data.py to make fixtures) ----------------------------------
def encode_varint(v: int) -> bytes:
  if v < 0:
    v += 1 << 64
  out = bytearray()
  while True:
    b = v & 0x7F
    v >>= 7
    if v:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
  return encode_varint(field << 3 | 2) + encode_varint(len(payload)) + payload


def encode_example(features: dict[str, list]) -> bytes:
  """{name: list of bytes | int | float} → serialized ``tf.train.Example`` (the value type of a
  feature is taken from its first element; an empty list gives an empty BytesList)."""
  ld = length_delimited
  entries = b""
  for name, values in features.items():
    values = list(values)
    if values and isinstance(values[0], int) and not isinstance(values[0], bool):
      body = ld(3, ld(1, b"".join(encode_varint(v) for v in values)))  # Int64List, packed
    elif values and isinstance(values[0], float):
      body = ld(2, ld(1, struct.pack(f"<{len(values)}f", *values)))  # FloatList, packed
    else:
      body = ld(1, b"".join(ld(1, bytes(v)) for v in values))  # BytesList
    entries += ld(1, ld(1, name.encode()) + ld(2, body))  # map entry {key=1, value=2}
  return ld(1, entries)  # Example{features=1: Features{feature=1: map}}


def frame_record(data: bytes) -> bytes:
  """One record in TFRecord framing."""
  header = struct.pack("<Q", len(data))
  return (
      header
      + struct.pack("<I", masked_crc32c(header))
      + data
      + struct.pack("<I", masked_crc32c(data))
  )
