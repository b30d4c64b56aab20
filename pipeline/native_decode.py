"""The canonical layout's compiled decoder: one pass per record, in C, that proves the
record follows the field table and extracts the flat frame's columns at once.

The native module (``foliowatch_wiredecode``, ``pipeline/native/``) is an optional build
for the central pipeline only (``scripts/bootstrap.sh`` installs it into ``.venv``); it
knows nothing of the wire schema. This module compiles ``schema.FIELDS`` (or the table a
``WireChecks`` was built from) into the layout it interprets: member order, kinds,
alphabets, lengths, enumerations, bounds, entry counts, and which values feed which
column of ``decode.FLAT_SCHEMA``. A table edit changes the layout at import; a table the
native decoder cannot express (``NativeLayoutError``) makes ``decoder`` return None after
saying so once, and ``decode_batch`` keeps its Python/polars path, exact either way.

What the native pass does not accept (any other layout, escapes, whitespace, unknown
members, numbers beyond int64 or near the double range, non-ASCII bytes) goes to that
path, so its verdicts and values are ``schema.decode``'s.

``FOLIOWATCH_DECODER=python`` in the environment turns the native pass off (benchmarks
measure both in one run).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch import schema as wire
from foliowatch.errors import FoliowatchError
from foliowatch.native import load_native, say_once
from foliowatch.schema import COUNTER, FLOAT, INT, LIST, MAP, OBJECT, STR, Field

log = logging.getLogger(__name__)

# The layout format this module writes; the native module states the one it reads.
LAYOUT_VERSION = 2
DECODER_ENV = "FOLIOWATCH_DECODER"
INT64_MIN = -(2**63)


class NativeLayoutError(FoliowatchError):
    """The field table holds something the native decoder cannot express."""


def _module():
    """The native module, or None (with the reason) when absent, stale or turned off."""
    return load_native("foliowatch_wiredecode", DECODER_ENV, "python", "LAYOUT_VERSION",
                       LAYOUT_VERSION, "the native decoder", "pipeline/native")


def _char_table(cls: Optional[str]) -> bytes:
    """256 flags: the bytes a string may hold, from a character-class body (None: any
    printable ASCII). Never the quote, the backslash, control or non-ASCII bytes: the
    native pass leaves strings holding those to Python (an escape, or a character
    whose UTF-8 form it does not read)."""
    rx = re.compile(f"[{cls}]") if cls is not None else None
    return bytes(1 if 0x20 <= c < 0x80 and chr(c) not in '"\\'
                 and (rx is None or rx.fullmatch(chr(c))) else 0 for c in range(256))


def _ascii_name(s: Any, what: str) -> bytes:
    if not isinstance(s, str) or not s.isascii() or any(ch in s for ch in '"\\') \
            or any(ord(ch) < 0x20 for ch in s):
        raise NativeLayoutError(f"{what} {s!r}: not a plain ASCII string")
    return s.encode()


def _exact_float(x: Any, what: str) -> float:
    if float(x) != x:
        raise NativeLayoutError(f"{what} {x!r} is not exactly a double")
    return float(x)


class _Compiler:
    """Walks a field table into the native layout's nested tuples, giving a slot to each
    value a column reads (``wanted``: member path -> (slot, column type))."""

    def __init__(self, mod, wanted: Dict[Tuple[str, ...], Tuple[int, int]]):
        self.mod = mod
        self.wanted = wanted
        self.found: Dict[Tuple[str, ...], int] = {}
        self.list_node: Optional[list] = None   # completed with the item columns

    def slot(self, path: Tuple[str, ...], f: Field) -> int:
        hit = self.wanted.get(path)
        if hit is None:
            return -1
        slot, ctype = hit
        want = {self.mod.C_INT: (INT, COUNTER), self.mod.C_FLOAT: (FLOAT,),
                self.mod.C_STR: (STR,)}[ctype]
        if f.kind not in want:
            raise NativeLayoutError(f"column input {'.'.join(path)} is a {f.kind}, the "
                                    f"column reads {want[0]}")
        self.found[path] = slot
        return slot

    def node(self, f: Field, path: Tuple[str, ...], in_list: bool = False,
             slot: Optional[int] = None) -> tuple:
        m = self.mod
        name = ".".join(path)
        if slot is None and f.kind in (STR, INT, COUNTER, FLOAT):
            slot = self.slot(path, f)
        if f.kind == STR:
            if f.choices is not None:
                choices = tuple(_ascii_name(c, f"{name} choice") for c in f.choices)
            else:
                choices = None
            if f.alphabet is not None:
                first, rest = _char_table(f.alphabet.first), _char_table(f.alphabet.rest)
                min_len = 1
            else:
                first = rest = _char_table(None)
                min_len = 0
            max_len = f.max_len if f.max_len is not None else wire.MAX_RECORD_BYTES
            return (m.K_STR, first, rest, min_len, max_len, choices, slot)
        if f.kind in (INT, COUNTER):
            if f.kind == COUNTER:   # schema: any integer delta >= 0, up to the maximum
                lo = 0
                choices = None      # (the validator does not read choices of a counter)
            else:
                lo = INT64_MIN if f.minimum is None else (
                    math.floor(f.minimum) + 1 if f.exclusive_minimum else math.ceil(f.minimum))
                choices = None
                if f.choices is not None:
                    if not all(type(c) is int for c in f.choices):
                        raise NativeLayoutError(f"{name}: integer choices expected")
                    choices = tuple(f.choices)
            hi = wire.INT64_MAX if f.maximum is None else min(math.floor(f.maximum),
                                                               wire.INT64_MAX)
            # beyond int64 the native pass refuses (Python judges): conservative
            lo = max(lo, INT64_MIN)
            return (m.K_INT, lo, hi, choices, slot)
        if f.kind == FLOAT:
            lo = None if f.minimum is None else _exact_float(f.minimum, f"{name} minimum")
            hi = None if f.maximum is None else _exact_float(f.maximum, f"{name} maximum")
            return (m.K_FLOAT, lo, bool(f.exclusive_minimum), hi, slot)
        if f.kind == OBJECT:
            return self.obj(f.members, path, in_list)
        if f.kind == LIST:
            if in_list or self.list_node is not None:
                raise NativeLayoutError(f"{name}: one list of objects, not nested, is supported")
            item = self.obj(f.members, path, True)
            max_items = f.max_items if f.max_items is not None else wire.MAX_RECORD_BYTES
            self.list_node = [m.K_LIST, max_items, item, (), ()]
            return self.list_node   # type: ignore[return-value]
        if f.kind == MAP:
            assert f.value is not None
            value = self.node(f.value, path + ("*",), in_list, slot=-1)
            kept: Dict[bytes, int] = {}
            for p in self.wanted:
                if p[:-1] == path:
                    kept[_ascii_name(p[-1], f"{name} kept name")] = self.slot(p, f.value)
            alpha = wire.MAP_NAME.alphabet
            assert alpha is not None and wire.MAP_NAME.max_len is not None
            max_items = f.max_items if f.max_items is not None else wire.MAX_RECORD_BYTES
            return (m.K_MAP, max_items, _char_table(alpha.first), _char_table(alpha.rest),
                    wire.MAP_NAME.max_len, value, kept)
        raise NativeLayoutError(f"{name}: kind {f.kind!r} is not supported")

    def obj(self, members: Sequence[Field], path: Tuple[str, ...], in_list: bool) -> tuple:
        return (self.mod.K_OBJ, tuple(
            (_ascii_name(mb.name, "member"), bool(mb.required),
             self.node(mb, path + (mb.name,), in_list)) for mb in members))


class NativeDecoder:
    """One compiled layout of one field table; ``decode`` proves and extracts a batch."""

    def __init__(self, mod, fields: Sequence[Field]):
        from .decode import FLAT_COLUMNS, FLAT_SCHEMA, MOUNT_COLUMNS
        ctype = {pl.Int64: mod.C_INT, pl.Float64: mod.C_FLOAT, pl.String: mod.C_STR}
        wanted: Dict[Tuple[str, ...], Tuple[int, int]] = {}

        def want(path: Tuple[str, ...], dt: pl.DataType) -> int:
            if dt not in ctype:
                raise NativeLayoutError(f"column of {'.'.join(path)}: dtype {dt} not supported")
            if path not in wanted:
                wanted[path] = (len(wanted), ctype[dt])
            elif wanted[path][1] != ctype[dt]:
                raise NativeLayoutError(f"{'.'.join(path)} is read as two types")
            return wanted[path][0]

        columns = []
        for c in FLAT_COLUMNS:
            if c.dtype != pl.Int64 and len(c.inputs) != 1:
                raise NativeLayoutError(f"column {c.name}: only integer columns sum inputs")
            columns.append((ctype.get(c.dtype, -1), tuple(
                want((c.source, n) if c.source else (n,), c.dtype) for n in c.inputs)))
        lists = [f for f in fields if f.kind == LIST]
        if len(lists) != 1 or lists[0].name != "mounts":
            raise NativeLayoutError("the flat frame's list column reads the one list 'mounts'")
        lst = lists[0]
        item_map = [mb for mb in lst.members if mb.kind == MAP]
        if len(item_map) != 1:
            raise NativeLayoutError(f"{lst.name}: items with one map expected")
        mount_struct = FLAT_SCHEMA["mounts"].inner   # type: ignore[attr-defined]
        item_columns = [(ctype[pl.String], (want((lst.name, "fs"), pl.String),))]
        for col, inputs in MOUNT_COLUMNS:
            item_columns.append((ctype[pl.Int64], tuple(
                want((lst.name, item_map[0].name, n), pl.Int64) for n in inputs)))
        self.item_names = [f.name for f in mount_struct.fields]
        self.column_names = [c.name for c in FLAT_COLUMNS]

        comp = _Compiler(mod, wanted)
        root = comp.obj(fields, (), False)
        missing = sorted(".".join(p) for p in wanted if p not in comp.found)
        if missing:
            raise NativeLayoutError(f"columns read {', '.join(missing)}, which the field "
                                    "table does not have")
        list_node = comp.list_node
        assert list_node is not None
        item_slots = sorted({s for _t, ins in item_columns for s in ins})
        list_node[3] = tuple(item_columns)
        list_node[4] = tuple(item_slots)
        root = _freeze(root)
        self.layout = mod.Layout(root, tuple(columns), len(wanted), wire.MAX_RECORD_BYTES,
                                 tuple(self.column_names), lst.name, tuple(self.item_names))
        self.flat_schema = FLAT_SCHEMA
        self.lock = threading.Lock()

    def decode(self, values: Sequence[bytes]) -> Tuple[pl.DataFrame, List[int]]:
        """(accepted rows as a ``FLAT_SCHEMA`` frame, the rows left to the other paths)."""
        with self.lock:
            rest, _n_ok, schema, array = self.layout.decode(values)
        # the columns come through the Arrow C data interface (the native module's
        # buffers, handed over): no pyarrow, no copy
        df = pl.Series(_ArrowBatch(schema, array)).struct.unnest()
        return df.select(list(self.flat_schema)), rest


class _ArrowBatch:
    """A decoded batch's (schema, array) capsules, for polars' Arrow PyCapsule import."""
    __slots__ = ("capsules",)

    def __init__(self, schema, array):
        self.capsules = (schema, array)

    def __arrow_c_array__(self, requested_schema=None):
        return self.capsules


def _freeze(x):
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def _say_once(reason: str) -> None:
    say_once(log, "decode: the compiled decoder is off (%s); the Python/polars path decodes "
                  "every record (the same verdicts, several times the CPU per record)", reason)


def decoder(checks) -> Optional[NativeDecoder]:
    """The compiled decoder of ``checks``' field table (built once per ``WireChecks``), or
    None, said once, when the module is absent, turned off, or cannot express the table."""
    cache = checks.__dict__
    if "_native_decoder" in cache and cache.get("_native_env") == os.environ.get(DECODER_ENV):
        return cache["_native_decoder"]
    mod, reason = _module()
    dec: Optional[NativeDecoder] = None
    if mod is not None:
        try:
            dec = NativeDecoder(mod, checks.fields)
        except NativeLayoutError as e:
            reason = f"it cannot express this field table: {e}"
    if dec is None:
        _say_once(reason)
    cache["_native_decoder"] = dec
    cache["_native_env"] = os.environ.get(DECODER_ENV)
    return dec
