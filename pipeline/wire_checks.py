"""The wire contract in vectorised form, derived from the field table ``schema.FIELDS``:
the Arrow/polars dtype a batch is parsed into, the anchored pattern that proves a record
in the canonical layout, and the column and text checks of the general path.

Nothing here restates a limit: every alphabet, length, bound, enumeration and member set
is read from the table, so a table edit changes all of them at once. ``WireChecks`` is
built from a table (``schema.FIELDS`` by default) so tests can prove that with another.

The vectorised checks are conservative: they may refuse a valid record (it then takes
``schema.decode``, which is exact) but must never accept one ``schema.decode`` rejects.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch import schema as wire
from foliowatch.schema import COUNTER, FLOAT, INT, LIST, MAP, OBJECT, STR, Field

# JSON number syntax the fast paths accept: at most 17 integer digits, 20 fraction digits
# and a two-digit exponent is always finite; longer numbers are left to the Python path.
_UNUM = r"(?:0|[1-9][0-9]{0,16})(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,2})?"
# A map entry takes at least 6 bytes ('"a":0,').
_MIN_ENTRY_BYTES = 6
KEY_RE = '":'
# v1 has no true/false/null values (Arrow reads a null as absent; a string containing the
# word merely takes the slow path).
BARE_WORDS_RE = r"true|false|null"

# Map members the pipeline reads (the others are validated but not kept): the key
# metrics' inputs, the carried counters and the host's uptime.
KEPT: Dict[str, Tuple[str, ...]] = {
    "counters": tuple(n for m in wire.KEY_METRIC_TABLE if m.source == "counters"
                      for n in m.inputs) + wire.CARRIED_COUNTERS,
    "gauges": ("uptime_s",) + tuple(n for m in wire.KEY_METRIC_TABLE if m.source == "gauges"
                                    for n in m.inputs),
    "mounts.counters": tuple(n for m in wire.KEY_METRIC_TABLE if m.source == "mounts"
                             for n in m.inputs),
}


def _string(f: Field) -> str:
    """The JSON text of a valid value of string field ``f`` (no escapes: see Alphabet)."""
    if f.choices is not None:
        return '"(?:' + "|".join(re.escape(str(c)) for c in f.choices) + ')"'
    assert f.alphabet is not None and f.max_len is not None, f.name
    for cls in f.alphabet:
        assert '"' not in cls and "\\" not in cls, f"{f.name}: alphabet must exclude \" and \\"
    return f'"[{f.alphabet.first}][{f.alphabet.rest}]{{0,{f.max_len - 1}}}"'


def _int_digits(f: Field) -> int:
    """Digits an integer may have so that every such number is within the maximum (and
    within int64, what the columns hold)."""
    hi = wire.INT64_MAX if f.maximum is None else min(int(f.maximum), wire.INT64_MAX)
    return len(str(hi)) - 1


def number_pattern(f: Field) -> Tuple[str, bool]:
    """(pattern, proven): the JSON text of ``f``'s numbers on the fast paths, and whether
    that syntax alone proves ``f``'s bounds (else a column check does)."""
    if f.kind in (INT, COUNTER):
        if f.choices is not None:
            return "(?:" + "|".join(str(int(c)) for c in f.choices) + ")", True
        d = _int_digits(f)
        if f.minimum == 0 and not f.exclusive_minimum:
            return rf"(?:0|[1-9][0-9]{{0,{d - 1}}})", True
        if f.minimum == 1 and not f.exclusive_minimum:
            return rf"[1-9][0-9]{{0,{d - 1}}}", True
        return rf"-?(?:0|[1-9][0-9]{{0,{d - 1}}})", False
    assert f.kind == FLOAT, f.name
    unsigned = f.minimum == 0 and not f.exclusive_minimum
    proven = f.maximum is None and (f.minimum is None or unsigned)
    return (_UNUM if unsigned else "-?" + _UNUM), proven


def _map_pattern(f: Field, repeat: Optional[str] = None) -> str:
    assert f.value is not None
    name = _string(wire.MAP_NAME)
    value = value_pattern(f.value)
    if repeat is None:
        repeat = _map_repeat(f)
    return rf"\{{(?:{name}:{value}(?:,{name}:{value}){repeat})?\}}"


def _map_repeat(f: Field) -> str:
    # small maps bound their entries in the pattern; large ones would make the automaton
    # huge, so their entries are counted instead (see WireChecks.canonical)
    return f"{{0,{f.max_items - 1}}}" if f.max_items is not None and f.max_items <= 64 else "*"


def _object_pattern(members: Sequence[Field]) -> str:
    assert members[0].required, "an object's first member must be required"
    parts = []
    for i, m in enumerate(members):
        piece = f'{"," if i else ""}"{m.name}":{value_pattern(m)}'
        parts.append(piece if m.required else f"(?:{piece})?")
    return r"\{" + "".join(parts) + r"\}"


def value_pattern(f: Field) -> str:
    if f.kind == STR:
        return _string(f)
    if f.kind in (INT, COUNTER, FLOAT):
        return number_pattern(f)[0]
    if f.kind == OBJECT:
        return _object_pattern(f.members)
    if f.kind == LIST:
        item = _object_pattern(f.members)
        return rf"\[(?:{item}(?:,{item})*)?\]"
    assert f.kind == MAP, f.name
    return _map_pattern(f)


def dtype(f: Field) -> Optional[pl.DataType]:
    """The polars dtype ``f`` is parsed into (None: not parsed, left to the text checks)."""
    if f.kind == STR:
        return pl.String
    if f.kind in (INT, COUNTER):
        return pl.Int64
    if f.kind == FLOAT:
        return pl.Float64
    if f.kind == OBJECT:
        return _struct(f.members)
    if f.kind == LIST:
        return pl.List(_struct(f.members, f.name + "."))
    kept = KEPT.get(f.name, ())
    if not kept:
        return None
    inner = dtype(f.value)  # type: ignore[arg-type]
    return pl.Struct({n: inner for n in kept})


def _struct(members: Sequence[Field], prefix: str = "") -> pl.Struct:
    fields = {}
    for m in members:
        dt = dtype(Field(prefix + m.name, m.kind, value=m.value, members=m.members)) \
            if m.kind == MAP else dtype(m)
        if dt is not None:
            fields[m.name] = dt
    return pl.Struct(fields)


class WireChecks:
    """The vectorised checks of one field table (the record's top-level members)."""

    def __init__(self, fields: Sequence[Field] = wire.FIELDS):
        self.fields = tuple(fields)
        self.dtype = _struct(self.fields)
        self.canonical_re = "^" + _object_pattern(self.fields) + "$"
        big = [f.max_items for f in self.fields
               if f.kind == MAP and _map_repeat(f) == "*" and f.max_items is not None]
        # below this length no map can hold more entries than the smallest large map allows
        self.max_big_map = min(big) if big else None
        self.short_record = (_MIN_ENTRY_BYTES * (self.max_big_map + 1) - 1
                             if self.max_big_map else None)
        self._top_maps = [f for f in self.fields if f.kind == MAP]
        lists = [f for f in self.fields if f.kind == LIST]
        assert len(lists) == 1, "the text checks expect one list of objects (mounts)"
        self._list = lists[0]
        item_maps = [m for m in self._list.members if m.kind == MAP]
        assert len(item_maps) == 1 and all(m.required for m in self._list.members), \
            "the text checks expect list items with required members and one map"
        self._item_map = item_maps[0]

    # -- the canonical layout: one pattern pass, then what only numbers can tell -----
    def canonical(self, text: pl.Series) -> pl.Series:
        """True for each record that follows ``canonical_re`` and the entry-count bound:
        what remains to check is numeric (``canonical_checks`` on the parsed record)."""
        ok = (text.str.contains(self.canonical_re)
              & (text.str.len_bytes() <= wire.MAX_RECORD_BYTES)).fill_null(False)
        if self.short_record is not None:
            long_rows = (text.str.len_bytes() >= self.short_record).fill_null(False)
            if long_rows.any():
                few_keys = text.str.count_matches(KEY_RE, literal=True) <= self.max_big_map
                ok = ok & (~long_rows | few_keys.fill_null(False))
        return ok

    def canonical_checks(self, d: pl.Expr) -> pl.Expr:
        """What ``canonical_re`` cannot see: bounds its number syntax does not prove and
        the number of list items."""
        return pl.all_horizontal([d.is_not_null()]
                                 + _object_conds(self.fields, d, numeric_only=True)
                                 ).fill_null(False)

    def canonical_paths(self) -> List[Tuple[str, ...]]:
        """Member paths ``canonical_checks`` reads (a list's path: its length)."""
        paths: List[Tuple[str, ...]] = []

        def walk(members: Sequence[Field], prefix: Tuple[str, ...]) -> None:
            for m in members:
                path = prefix + (m.name,)
                if m.kind in (INT, COUNTER, FLOAT) and not number_pattern(m)[1]:
                    paths.append(path)
                elif m.kind == OBJECT:
                    walk(m.members, path)
                elif m.kind == LIST:
                    if m.max_items is not None:
                        paths.append(path)
                    walk(m.members, path)
        walk(self.fields, ())
        return paths

    def pruned_dtype(self, needed: Sequence[Tuple[str, ...]]) -> pl.Struct:
        """``dtype`` with only the member paths ``needed`` and those ``canonical_paths``
        names: what the canonical path parses (the pattern has proven the rest; a JSON
        reader builds only the columns it is asked for, and skips the other members)."""
        want = set(needed) | set(self.canonical_paths())

        def prune(dt: pl.DataType, prefix: Tuple[str, ...]) -> pl.DataType:
            if isinstance(dt, pl.List):
                return pl.List(prune(dt.inner, prefix))
            if not isinstance(dt, pl.Struct):
                return dt
            fields = {}
            for f in dt.fields:
                path = prefix + (f.name,)
                if path in want or any(w[:len(path)] == path for w in want):
                    fields[f.name] = prune(f.dtype, path)
            if not fields:   # a list whose length alone is read: keep one member
                first = dt.fields[0]
                fields[first.name] = prune(first.dtype, prefix + (first.name,))
            return pl.Struct(fields)
        out = prune(self.dtype, ())
        assert isinstance(out, pl.Struct)
        return out

    # -- any other layout: the parsed columns, then the JSON text --------------------
    def checks(self, d: pl.Expr, raw: pl.Expr) -> pl.Expr:
        """True when the parsed row certainly follows the table in everything its
        columns show (types are strict: see ``decode._arrow_options``)."""
        return pl.all_horizontal([d.is_not_null()] + _object_conds(self.fields, d)
                                 + [raw.str.contains(BARE_WORDS_RE).not_()]).fill_null(False)

    def text_conds(self) -> List[pl.Expr]:
        """Checks on the JSON text (rows holding no whitespace: screened before parsing):
        the maps' names, value syntax and sizes, and a key count that proves there is no
        unknown field at any level. Valid strings hold no quotes, braces, brackets,
        commas or colons, so counting ``":`` counts keys. Layouts these checks do not
        expect (a top-level map after the list) are left to the Python path."""
        raw = pl.col("raw")
        d = pl.col("d")

        def keys(e: pl.Expr) -> pl.Expr:
            return e.str.count_matches(KEY_RE, literal=True).cast(pl.Int64)

        lst, item_map = self._list, self._item_map
        item_names = {m.name for m in lst.members}
        n_items = d.struct.field(lst.name).list.len().cast(pl.Int64)
        list_at = raw.str.find(f'"{lst.name}":[', literal=True)
        span = raw.str.extract(rf'"{lst.name}":\[(?:[^\[\]{{}}]|\{{(?:[^{{}}]|\{{[^{{}}]*\}})*\}})*\]', 0)
        conds: List[pl.Expr] = []
        expected = keys(span) - 1   # the span's own key is a top-level one, counted below
        for f in self.fields:
            if f.kind != MAP:
                expected = expected + d.struct.field(f.name).is_not_null().cast(pl.Int64)
                if f.kind == OBJECT:
                    expected = expected + pl.sum_horizontal(
                        [d.struct.field(f.name).struct.field(m.name).is_not_null()
                         .cast(pl.Int64) for m in f.members])
        for f in self._top_maps:
            text = raw.str.extract(rf'"{f.name}":\{{[^{{}}]*\}}', 0)    # the first one
            grammar = text.str.contains(f'^"{f.name}":{_map_pattern(f)}$')
            present = text.is_not_null()
            conds.append(grammar if f.required else (~present | grammar))
            entries = (keys(text) - 1).fill_null(0)
            if f.max_items is not None:
                conds.append(entries <= f.max_items)
            if f.name in item_names:   # the list's items hold a map of the same name
                conds.append(raw.str.find(f'"{f.name}":{{', literal=True) < list_at)
            expected = expected + present.cast(pl.Int64) + entries
        item_map_re = f'"{item_map.name}":{_map_pattern(item_map, "*")}'
        conds += [
            # each item has exactly its members and a valid map, of bounded size
            span.str.count_matches(item_map_re).cast(pl.Int64) == n_items,
            ~span.str.contains(rf'"{item_map.name}":\{{(?:[^,{{}}]*,){{{item_map.max_items}}}'),
            keys(span.str.replace_all(rf'"{item_map.name}":\{{[^{{}}]*\}}',
                                      f'"{item_map.name}":0'))
            == 1 + len(lst.members) * n_items,
            # no key beyond the ones accounted for: no unknown field at any level
            keys(raw) == expected,
        ]
        return conds

    def text_checks(self, df: pl.DataFrame) -> pl.Series:
        return df.select(pl.all_horizontal(self.text_conds()).fill_null(False)
                         .alias("ok"))["ok"]


def _bound_conds(f: Field, x: pl.Expr) -> List[pl.Expr]:
    conds = []
    if f.minimum is not None:
        conds.append(x > f.minimum if f.exclusive_minimum else x >= f.minimum)
    if f.maximum is not None and not (f.kind in (INT, COUNTER) and f.maximum >= wire.INT64_MAX):
        conds.append(x <= f.maximum)
    return conds


def _value_conds(f: Field, x: pl.Expr, numeric_only: bool) -> List[pl.Expr]:
    """Conditions on column ``x`` holding field ``f``'s (present) value. With
    ``numeric_only``, only what the canonical pattern does not prove."""
    if f.kind in (INT, COUNTER):
        if numeric_only and number_pattern(f)[1]:
            return []
        conds = _bound_conds(f, x)
        if f.choices is not None:
            conds.append(x.is_in(list(f.choices)))
        return conds
    if f.kind == FLOAT:
        if numeric_only and number_pattern(f)[1]:
            return []
        return [x.is_finite()] + _bound_conds(f, x)
    if f.kind == STR:
        if numeric_only:
            return []
        conds = []
        if f.alphabet is not None:
            conds += [x.str.contains(f.alphabet.pattern), x.str.len_chars() <= f.max_len]
        if f.choices is not None:
            conds.append(x.is_in(list(f.choices)))
        return conds
    if f.kind == OBJECT:
        return _object_conds(f.members, x, numeric_only)
    if f.kind == LIST:
        conds = [] if f.max_items is None else [x.list.len() <= f.max_items]
        item = _object_conds(f.members, pl.element(), numeric_only, prefix=f.name + ".")
        if item:   # a member missing from an item (null) fails it
            conds.append(x.list.eval(pl.all_horizontal(item).fill_null(False))
                         .list.all().fill_null(True))
        return conds
    return []   # MAP contents: the text checks


def _object_conds(members: Sequence[Field], obj: pl.Expr, numeric_only: bool = False,
                  prefix: str = "") -> List[pl.Expr]:
    conds = []
    for m in members:
        if m.kind == MAP and dtype(Field(prefix + m.name, m.kind, value=m.value)) is None:
            continue   # not parsed: the text checks see it
        x = obj.struct.field(m.name)
        inner = _value_conds(m, x, numeric_only)
        if m.required:
            if not numeric_only:
                conds.append(x.is_not_null())
            conds += inner
        elif inner:
            conds.append(x.is_null() | pl.all_horizontal(inner))
    return conds


DEFAULT = WireChecks()
