"""The simulator's compiled encoder: the wire records of a flat chunk, one ``bytes`` per
row, in one pass in C, byte for byte what ``schema.encode`` writes for each record.

The native module (``foliowatch_wireencode``, ``simulator/native/``) is an optional build
for the central virtualenv (``scripts/bootstrap.sh`` installs it into ``.venv``); it
knows nothing of the wire schema. This module compiles ``schema.FIELDS`` and the
simulator's column spec (``frames.wire_spec``) into the program it runs: literal text
(member names and punctuation, merged), a column's value (int64, double, string), and
"only where this column is not null" around the members present on some rows. A table
or spec edit changes the program at the next chunk; a spec the program cannot express
(``NativeProgramError``), or a module that is absent or stale, makes ``encoder`` return
None after saying so once, and ``frames.to_wire_bytes`` keeps polars' encoding.

``FOLIOWATCH_ENCODER=polars`` in the environment turns the native pass off (the
benchmark measures both in one run).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch import schema
from foliowatch.errors import FoliowatchError
from foliowatch.native import load_native

log = logging.getLogger(__name__)

# The program format this module writes; the native module states the one it runs.
PROGRAM_VERSION = 1
ENCODER_ENV = "FOLIOWATCH_ENCODER"


class NativeProgramError(FoliowatchError):
    """The spec holds something the native encoder cannot express."""


def _module():
    """The native module, or None (with the reason) when absent, stale or turned off."""
    return load_native("foliowatch_wireencode", ENCODER_ENV, "polars", "PROGRAM_VERSION",
                       PROGRAM_VERSION, "the native encoder", "simulator/native")


def _kind(dtype: pl.DataType, column: str) -> str:
    """The native column kind of a polars dtype: what the value is in a record dict (an
    int, a float or a str), so its text is what ``json.dumps`` writes for it."""
    if dtype.is_integer():
        return "i"
    if dtype.is_float():
        return "f"
    if dtype == pl.String:
        return "s"
    raise NativeProgramError(f"column {column}: {dtype} has no native encoding")


class _Compiler:
    """Walks the field table and the spec into ops, in the order ``schema.encode`` writes
    the members (table order; a map's entries in the spec's order)."""

    def __init__(self, mod, dtypes: Dict[str, pl.DataType]):
        self.mod, self.dtypes = mod, dtypes
        self.ops: List[tuple] = []
        self.columns: List[Tuple[str, str]] = []   # (name, kind) in column index order
        self._index: Dict[str, int] = {}
        self._barrier = 0                           # a literal never merges across an IF

    def column(self, name: str) -> int:
        if name not in self._index:
            if name not in self.dtypes:
                raise NativeProgramError(f"column {name}: not in the chunk")
            self._index[name] = len(self.columns)
            self.columns.append((name, _kind(self.dtypes[name], name)))
        return self._index[name]

    def lit(self, text: str) -> None:
        if len(self.ops) > self._barrier and self.ops[-1][0] == self.mod.OP_LIT:
            self.ops[-1] = (self.mod.OP_LIT, self.ops[-1][1] + text.encode())
        else:
            self.ops.append((self.mod.OP_LIT, text.encode()))

    def obj(self, members: Sequence[schema.Field], spec: Dict[str, object]) -> None:
        from .frames import Present
        unknown = set(spec) - {m.name for m in members}
        if unknown:
            raise NativeProgramError(f"spec members not in the table: {sorted(unknown)}")
        self.lit("{")
        first = True
        for m in members:
            if m.name not in spec:
                if m.required:
                    raise NativeProgramError(f"member {m.name}: required, not in the spec")
                continue
            v = spec[m.name]
            if isinstance(v, Present):
                if first:
                    raise NativeProgramError(f"member {m.name}: an object's first member "
                                             "must be present on every row")
                at = len(self.ops)
                self.ops.append(None)              # the IF, once its length is known
                self._barrier = len(self.ops)
                self.lit(f',"{m.name}":')
                self.value(m, v.spec)
                self.ops[at] = (self.mod.OP_IF, self.column(v.column), len(self.ops) - at - 1)
                self._barrier = len(self.ops)
            else:
                self.lit(("" if first else ",") + f'"{m.name}":')
                self.value(m, v)
            first = False
        self.lit("}")

    def value(self, f: schema.Field, spec) -> None:
        from .frames import Col, Lit, Present
        if f.kind == schema.OBJECT:
            self.obj(f.members, spec)
        elif f.kind == schema.LIST:
            self.lit("[")
            for i, item in enumerate(spec):
                if i:
                    self.lit(",")
                self.obj(f.members, item)
            self.lit("]")
        elif f.kind == schema.MAP:
            self.obj([replace(f.value, name=k, required=not isinstance(v, Present))
                      for k, v in spec.items()], spec)
        elif isinstance(spec, Lit):
            self.lit(json.dumps(spec.value, ensure_ascii=False, allow_nan=False))
        elif isinstance(spec, Col):
            i = self.column(spec.name)
            kind = self.columns[i][1]
            if f.kind == schema.STR and kind != "s":
                raise NativeProgramError(f"member {f.name}: a string, column {spec.name} "
                                         f"is {self.dtypes[spec.name]}")
            if f.kind != schema.STR and kind == "s":
                raise NativeProgramError(f"member {f.name}: a number, column {spec.name} "
                                         "is a string")
            op = {"i": self.mod.OP_INT, "f": self.mod.OP_FLOAT, "s": self.mod.OP_STR}[kind]
            self.ops.append((op, i))
        else:
            raise NativeProgramError(f"member {f.name}: spec {spec!r} is not a leaf")


class Encoder:
    """A compiled program per chunk schema; ``encode(frame)`` -> list of ``bytes``."""

    def __init__(self, mod, fields: Sequence[schema.Field], spec_of: Callable[[], dict]):
        self.mod, self.fields, self.spec_of = mod, tuple(fields), spec_of
        self._programs: Dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def program(self, dtypes: Dict[str, pl.DataType]) -> tuple:
        key = tuple(dtypes.items())
        with self._lock:
            hit = self._programs.get(key)
            if hit is None:
                c = _Compiler(self.mod, dtypes)
                c.obj(self.fields, self.spec_of())
                hit = self._programs[key] = (tuple(c.ops), tuple(c.columns))
            return hit

    def encode(self, frame: pl.DataFrame) -> List[bytes]:
        ops, columns = self.program(dict(frame.schema))
        args = tuple(_column_buffers(frame[name], kind) for name, kind in columns)
        try:
            return self.mod.encode(ops, args, frame.height, schema.MAX_RECORD_BYTES)
        except (ValueError, OverflowError) as e:
            # the row's column, by name: the native module knows only indexes
            raise schema.SchemaError("record", f"{_named(str(e), columns)}") from None


def _named(message: str, columns: Sequence[Tuple[str, str]]) -> str:
    import re
    return re.sub(r"column (\d+)", lambda m: f"column {columns[int(m.group(1))][0]}", message)


def _column_buffers(s: pl.Series, kind: str) -> tuple:
    """(kind, values, data buffers, offset, validity): int64 or float64 values as numpy
    (nulls filled, a validity array beside them), strings as Arrow string views."""
    validity = s.is_not_null().to_numpy() if s.null_count() else None
    if kind == "i":
        return (kind, s.cast(pl.Int64).fill_null(0).to_numpy(), None, 0, validity)
    if kind == "f":
        return (kind, s.cast(pl.Float64).fill_null(0.0).to_numpy(), None, 0, validity)
    import pyarrow as pa
    arr = s.rechunk().to_arrow(compat_level=pl.CompatLevel.newest())
    if not pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string_view())
    bufs = arr.buffers()
    return (kind, bufs[1], tuple(b if b is not None else b"" for b in bufs[2:]), arr.offset,
            validity)


_encoder: Optional[Encoder] = None
_said = False
_encoder_lock = threading.Lock()


def encoder() -> Optional[Encoder]:
    """The native encoder for ``schema.FIELDS`` and ``frames.wire_spec``, or None (said
    once, with the reason) when it is not usable here."""
    global _encoder, _said
    with _encoder_lock:
        if _encoder is not None and os.environ.get(ENCODER_ENV, "native") != "polars":
            return _encoder
        mod, why = _module()
        if mod is None:
            if not _said:
                log.info("simulator: encoding records with polars: %s", why)
                _said = True
            return None
        from .frames import wire_spec
        _encoder = Encoder(mod, schema.FIELDS, wire_spec)
        return _encoder


__all__ = ["Encoder", "NativeProgramError", "encoder", "ENCODER_ENV", "PROGRAM_VERSION"]
