"""Loading pickles without executing anything: plain data only.

A pickle is a program: its GLOBAL / STACK_GLOBAL / INST / EXT opcodes import any callable and
REDUCE / NEWOBJ / BUILD call it. Every one of those paths goes through ``Unpickler.find_class``;
refusing it unconditionally (and refusing persistent ids) leaves only the opcodes that build
builtin data — dict, list, tuple, set, frozenset, str, bytes, int, float, bool, None — so nothing
from the file can run. Path-VQA's QA pickles are lists of dicts of strings and numbers, which
need nothing more. (Protocols 0–3 spell ``set`` — and 0–2 ``bytes`` — as calls to globals, so
such objects are refused in old-protocol pickles; str, int, float, list, tuple and dict load in
every protocol.)
"""

from __future__ import annotations

import io
import pickle


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle asked for an import (a class or function): refused, nothing was executed."""


class _DataOnlyUnpickler(pickle.Unpickler):

  def __init__(self, file, source: str):
    super().__init__(file)
    self._source = source

  def find_class(self, module, name):
    raise UnsafePickleError(
        f"{self._source}: refused to load the global {module}.{name}: only plain data "
        "(dict, list, tuple, set, str, bytes, int, float, bool, None) is accepted; "
        "nothing was imported or executed"
    )

  def persistent_load(self, pid):
    raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r}")


def load_data_pickle(path) -> object:
  """The plain-data object pickled in ``path``; UnsafePickleError if it needs any import."""
  with open(path, "rb") as f:
    data = f.read()
  return loads_data_pickle(data, source=str(path))


def loads_data_pickle(data: bytes, source: str = "<bytes>") -> object:
  try:
    return _DataOnlyUnpickler(io.BytesIO(data), source).load()
  except UnsafePickleError:
    raise
  except Exception as e:  # truncated / corrupt stream
    raise pickle.UnpicklingError(f"{source}: corrupt pickle: {e}") from None
