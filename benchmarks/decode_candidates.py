"""Decode + validate candidates, side by side on the same simulator records in one run:
the pipeline's path (one anchored pattern pass proving the canonical layout, one Arrow
JSON read, numeric checks on the columns; pipeline/decode.py) against a one-pass typed
decode with msgspec (structs built from ``schema.FIELDS`` check syntax, types, bounds,
enumerations, sizes, required and unknown members in C; a function generated from the
table checks the alphabets and extracts the flat row).

    .venv/bin/python benchmarks/decode_candidates.py [--records 100000] [--rounds 3]

Both produce the same flat frame (checked here). Prints one JSON object per measurement
and a table with the ratio to the pipeline's path. The candidate is not shipped: it was
measured slower (see pipeline_throughput.md).

The candidate, in detail: alphabets are checked with a regular expression only for
strings not seen before (names of counters, labels and host ids repeat from record to
record, so valid ones are remembered up to ``_CACHE_LIMIT`` per alphabet and a record's
strings are usually proven by one set lookup); whatever it cannot prove it refuses.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Literal, Sequence, Tuple

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foliowatch import schema as wire  # noqa: E402
from foliowatch.schema import COUNTER, FLOAT, INT, LIST, MAP, OBJECT, STR, Alphabet, Field

# Valid strings remembered per alphabet: bounds the memory a stream of distinct names
# (boot ids, hostile input) can take; past it, strings are checked by the expression.
_CACHE_LIMIT = 500_000


class _Known:
    """Strings of one alphabet known to be valid."""

    def __init__(self, alphabet: Alphabet):
        self.regex = re.compile(alphabet.pattern)
        self.ok: set = set()

    def check(self, strings) -> bool:
        """All of ``strings`` (an iterable of str, e.g. a dict's keys) are valid."""
        ok = self.ok
        if ok.issuperset(strings):
            return True
        for s in strings:
            if s not in ok:
                if not self.regex.fullmatch(s):
                    return False
                if len(ok) < _CACHE_LIMIT:
                    ok.add(s)
        return True


def _str_type(f: Field):
    if f.choices is not None:
        return Literal[tuple(f.choices)]   # type: ignore[misc]
    return Annotated[str, Meta(min_length=1, max_length=f.max_len)]


def _num_type(f: Field, base: type):
    kw: Dict[str, Any] = {}
    conv = float if base is float else int
    if f.minimum is not None:
        kw["gt" if f.exclusive_minimum else "ge"] = conv(f.minimum)
    if f.maximum is not None:
        kw["le"] = conv(f.maximum)
    return Annotated[base, Meta(**kw)] if kw else base


def _type(f: Field, path: str):
    if f.kind == STR:
        return _str_type(f)
    if f.kind in (INT, COUNTER):
        if f.choices is not None:
            return Literal[tuple(int(c) for c in f.choices)]   # type: ignore[misc]
        return _num_type(f, int)
    if f.kind == FLOAT:
        return _num_type(f, float)
    if f.kind == OBJECT:
        return _struct(path, f.members)
    if f.kind == LIST:
        return Annotated[List[_struct(path + "_item", f.members)],  # type: ignore[misc]
                         Meta(max_length=f.max_items)]
    assert f.kind == MAP and f.value is not None, f.name
    return Annotated[Dict[_str_type(wire.MAP_NAME), _type(f.value, path + "_value")],
                     Meta(max_length=f.max_items)]


def _struct(name: str, members: Sequence[Field]):
    fields = [(m.name, _type(m, f"{name}_{m.name}")) if m.required
              else (m.name, _type(m, f"{name}_{m.name}"), None) for m in members]
    # gc=False: the structs hold no reference cycles; keeps the collector out of decoding
    return msgspec.defstruct(name.title().replace("_", "") or "Record", fields,
                             forbid_unknown_fields=True, gc=False)


class TypedDecoder:
    """Decoder and row extractor of one field table; ``flat_columns`` (decode.FLAT_COLUMNS)
    and ``mount_columns`` say what the rows hold."""

    def __init__(self, fields: Sequence[Field], flat_columns, mount_columns):
        self.fields = tuple(fields)
        self.decoder = msgspec.json.Decoder(_struct("record", self.fields))
        self.known: Dict[Alphabet, _Known] = {}
        self.flatten = self._compile(flat_columns, mount_columns)

    def _check(self, alphabet: Alphabet) -> str:
        if alphabet not in self.known:
            self.known[alphabet] = _Known(alphabet)
        return f"K{list(self.known).index(alphabet)}"

    def _compile(self, flat_columns, mount_columns):
        """Generate ``flatten(record) -> row tuple or None`` from the table: every string
        whose alphabet the struct types cannot check (one set lookup per group of strings
        of one alphabet; the expression only for strings not seen before), then the flat
        columns, the last one the mounts as ``(fs, *mount columns)`` tuples."""
        lines: List[str] = ["def flatten(r):"]
        conds: List[str] = []

        def known(alphabet: Alphabet, strings: str) -> str:
            k = self._check(alphabet)
            return f"({k}ok.issuperset({strings}) or {k}.check({strings}))"

        def object_conds(members: Sequence[Field], obj: str) -> List[str]:
            out: List[str] = []
            plain: Dict[Alphabet, List[str]] = {}
            for m in members:
                x = f"{obj}.{m.name}"
                if m.kind == STR and m.alphabet is not None and m.choices is None:
                    if m.required:
                        plain.setdefault(m.alphabet, []).append(x)
                    else:
                        out.append(f"({x} is None or {known(m.alphabet, f'({x},)')})")
                elif m.kind == OBJECT:
                    sub = object_conds(m.members, x)
                    if sub:
                        both = " and ".join(sub)
                        out.append(both if m.required else f"({x} is None or ({both}))")
                elif m.kind == MAP:
                    assert m.value is not None and wire.MAP_NAME.alphabet is not None
                    names = known(wire.MAP_NAME.alphabet, x)
                    if m.value.kind == STR and m.value.alphabet is not None:
                        names += " and " + known(m.value.alphabet, f"{x}.values()")
                    out.append(names if m.required else f"({x} is None or ({names}))")
                elif m.kind == LIST:
                    item = object_conds(m.members, "i")
                    if item:
                        out.append(f"all({' and '.join(item)} for i in {x})")
            for alphabet, xs in plain.items():
                out.insert(0, known(alphabet, f"({', '.join(xs)},)"))
            return out

        conds = object_conds(self.fields, "r")
        lines.append(f"    if not ({' and '.join(conds) or 'True'}):")
        lines.append("        return None")
        out: List[str] = []
        getters: Dict[str, str] = {}
        n = 0
        for c in flat_columns:
            if not c.source:
                out.append(f"r.{c.inputs[0]}")
                continue
            obj = f"r.{c.source}"
            optional = not wire.FIELD[c.source].required
            if wire.FIELD[c.source].kind == OBJECT:
                v = f"{obj}.{c.inputs[0]}"
                out.append(f"(None if {obj} is None else {v})" if optional else v)
                continue
            assert not optional, "optional maps: not generated"
            if c.source not in getters:
                getters[c.source] = f"get_{c.source}"
                lines.append(f"    get_{c.source} = {obj}.get")
            gets = [f"{getters[c.source]}({n_!r})" for n_ in c.inputs]
            if len(gets) == 1:
                out.append(gets[0])
                continue
            # a sum of the present inputs, None when none is present
            lines.append(f"    v{n} = [x for x in ({', '.join(gets)}) if x is not None]")
            lines.append(f"    v{n} = sum(v{n}) if v{n} else None")
            lines.append(f"    if v{n} is not None and v{n} > {wire.INT64_MAX}:")
            lines.append("        return None")
            out.append(f"v{n}")
            n += 1
        mount = ["m.fs"]
        for name, inputs in mount_columns:
            assert len(inputs) == 1, "summed mount inputs: not generated"
            mount.append(f"m.counters.get({inputs[0]!r})")
        out.append(f"[({', '.join(mount)},) for m in r.mounts]")
        lines.append(f"    return ({', '.join(out)},)")
        scope: Dict[str, Any] = {}
        for i, k in enumerate(self.known.values()):
            scope[f"K{i}"], scope[f"K{i}ok"] = k, k.ok
        self.source = "\n".join(lines)
        exec(compile(self.source, "<typed_decode.flatten>", "exec"), scope)
        return scope["flatten"]

    def rows(self, values: Sequence[bytes]) -> Tuple[List[int], List[tuple], List[int]]:
        """(accepted row numbers, their flat tuples, refused row numbers)."""
        decode, flatten = self.decoder.decode, self.flatten
        err = (msgspec.ValidationError, msgspec.DecodeError)
        good: List[int] = []
        flat: List[tuple] = []
        refused: List[int] = []
        limit = wire.MAX_RECORD_BYTES
        for i, v in enumerate(values):
            if len(v) > limit:
                refused.append(i)
                continue
            try:
                row = flatten(decode(v))
            except err:
                row = None
            if row is None:
                refused.append(i)
            else:
                good.append(i)
                flat.append(row)
        return good, flat, refused


_DECODERS: Dict[Tuple[Field, ...], TypedDecoder] = {}


def decoder_for(fields: Sequence[Field], flat_columns, mount_columns) -> TypedDecoder:
    key = tuple(fields)
    d = _DECODERS.get(key)
    if d is None:
        d = _DECODERS[key] = TypedDecoder(key, flat_columns, mount_columns)
    return d


def frame(rows: List[int], flat: List[tuple]):
    """The pipeline's flat frame (decode.FLAT_SCHEMA) from the candidate's row tuples."""
    import polars as pl
    import pyarrow as pa
    from foliowatch.pipeline.decode import FLAT_COLUMNS, FLAT_SCHEMA, MOUNT_COLUMNS
    cols = list(zip(*flat))
    data = {"row": pl.Series("row", rows, dtype=pl.Int64)}
    for c, col in zip(FLAT_COLUMNS, cols):
        data[c.name] = pl.Series(c.name, col, dtype=c.dtype, strict=False)
    offsets = [0]
    items: List[tuple] = []
    for ms in cols[-1]:
        items += ms
        offsets.append(len(items))
    mcols = list(zip(*items)) if items else [()] * (1 + len(MOUNT_COLUMNS))
    structs = pa.StructArray.from_arrays(
        [pa.array(mcols[0], pa.string())] + [pa.array(c, pa.int64()) for c in mcols[1:]],
        names=["fs"] + [c for c, _ in MOUNT_COLUMNS])
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs)
    data["mounts"] = pl.Series("mounts", pl.from_arrow(lists)).cast(FLAT_SCHEMA["mounts"])
    return pl.DataFrame(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from foliowatch.pipeline.decode import FLAT_COLUMNS, MOUNT_COLUMNS, decode_batch
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.outputs import write_files

    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="fw-decode-") as tmp:
        sc = load_scenario("seed-iomap-arm64-xfs", hosts=2000,
                           hours=args.records / (2000 * 360.0), seed=1)
        path = write_files(sc, tmp, seed=1)[0]
        values = Path(path).read_bytes().splitlines()
    typed = decoder_for(wire.FIELDS, FLAT_COLUMNS, MOUNT_COLUMNS)

    def pipeline_path(batch):
        return decode_batch(batch).good

    def candidate(batch):
        good, flat, refused = typed.rows(batch)
        assert not refused, "the simulator's records are all valid"
        return frame(good, flat)

    a, b = pipeline_path(values[:1000]), candidate(values[:1000])
    assert a.equals(b), "the candidate's frame differs from the pipeline's"
    results: Dict[str, List[float]] = {"pipeline (pattern + Arrow JSON)": [],
                                       "candidate (msgspec typed structs)": []}
    for _ in range(args.rounds):
        for (name, fn) in zip(results, (pipeline_path, candidate)):
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(values), args.batch):
                fn(values[i:i + args.batch])
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            results[name].append(cpu / len(values) * 1e6)
            print(json.dumps({"what": name, "records": len(values),
                              "records_per_s": round(len(values) / wall),
                              "cpu_us_per_record": round(cpu / len(values) * 1e6, 2),
                              "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)
    base = min(next(iter(results.values())))
    print("\n| decode + validate | CPU µs/record (best of rounds) | vs pipeline's path |")
    print("|---|---|---|")
    for name, xs in results.items():
        print(f"| {name} | {min(xs):.2f} | {min(xs) / base:.2f}x |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
