"""The pipeline's vectorised decode/validate agrees with wire schema v1 (schema.decode)
record by record, including on hostile input, and its key metrics agree with
schema.key_metrics."""

from __future__ import annotations

import copy
import json
import math
import random

import polars as pl
import pytest

from foliowatch import schema as wire
from foliowatch.pipeline.aggregate import record_key_metrics
from foliowatch.pipeline.decode import decode_batch, python_verdict
from foliowatch.pipeline.wire_checks import DEFAULT as checks


def _enc(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def varied_record(rng: random.Random, i: int) -> dict:
    """Valid records with the shapes the fleet sends: several filesystems, no mounts,
    a probe, counters the kernel lacks, integer gauges and float timestamps."""
    r = wire.example_record(seq=i, ts=1764000000.0 + 10 * i + rng.random(),
                            host_id=f"host-{rng.randrange(40)}")
    r["labels"] = dict(r["labels"], arch=rng.choice(["arm64", "x86_64"]),
                       page_size=rng.choice([4096, 65536]), kernel=rng.choice(
                           ["6.6.87-101.aarch64", "6.12.40-63"]))
    kind = rng.randrange(6)
    if kind == 0:
        r["mounts"].append({"mount": "/data", "fs": "ext4", "device": "sdb",
                            "counters": {"write_bytes": rng.randrange(10**9), "write_ios": 5}})
    elif kind == 1:
        r["mounts"] = []
    elif kind == 2:
        r["probe"] = {"bytes": 1 << 28, "seconds": 1.5, "chunk_bytes": 1 << 20,
                      "mib_s": 170.7, "compact_stall": 3, "allocstall": 0}
    elif kind == 3:
        del r["counters"]["pgscan_direct"]
        del r["counters"]["allocstall_normal"]
        del r["counters"]["allocstall_movable"]
        r["gauges"]["uptime_s"] = 12345
    elif kind == 4:
        r["mounts"].append({"mount": "/var/log", "fs": "xfs", "device": "nvme2n1",
                            "counters": {"write_ios": 7}})
        del r["settings"]
        del r["agent"]
    r["counters"]["compact_stall"] = rng.randrange(1000)
    r["gauges"]["frag_unusable_1m"] = rng.random()
    return r


BAD_VALUES = [None, True, False, 1.5, 1.0, -1, 0, "x", "", [], {}, [1], {"a": 1},
              2**63, 2**64, "1", 1e308, -0.0]
HOSTILE_STRINGS = ["a" * 65, "a" * 129, "../../etc", "x y", "caf\u00e9", "\U0001F600",
                   "name\n", "name\\n", "{brace}", "a\"b", "a,b", "a:b", "-lead", "ok-1.2_3"]


def mutate(rng: random.Random, base: dict) -> bytes:
    r = copy.deepcopy(base)
    if not r["mounts"]:
        r["mounts"] = copy.deepcopy(wire.example_record()["mounts"])
    k = rng.randrange(26)
    if k == 0:
        r[rng.choice(wire.REQUIRED_FIELDS)] = rng.choice(BAD_VALUES)
    elif k == 1:
        del r[rng.choice(wire.REQUIRED_FIELDS)]
    elif k == 2:
        r[rng.choice(["extra", "Schema", "labels2"])] = rng.choice([1, "x", {}])
    elif k == 3:
        r["labels"][rng.choice(list(wire.LABELS))] = rng.choice(BAD_VALUES + HOSTILE_STRINGS)
    elif k == 4:
        r["labels"]["team"] = "x"
    elif k == 5:
        r["counters"][rng.choice(["compact_stall", "nr_dirtied", "x"])] = rng.choice(BAD_VALUES)
    elif k == 6:
        r["counters"][rng.choice(HOSTILE_STRINGS + ["Upper", "9lead", "ok_name"])] = 1
    elif k == 7:
        r["counters"] = {f"c{j}": j for j in range(rng.choice([256, 257]))}
    elif k == 8:
        r["gauges"][rng.choice(["uptime_s", "frag_unusable_1m", "g"])] = rng.choice(BAD_VALUES)
    elif k == 9:
        r["mounts"][0]["counters"] = {f"c{j}": j for j in range(rng.choice([32, 33]))}
    elif k == 10:
        r["mounts"] = [dict(r["mounts"][0]) for _ in range(rng.choice([16, 17]))]
    elif k == 11:
        m = r["mounts"][0]
        m[rng.choice(["mount", "fs", "device", "counters", "extra"])] = \
            rng.choice(BAD_VALUES + HOSTILE_STRINGS + ["/ok/path", "ntfs"])
    elif k == 12:
        del r["mounts"][0][rng.choice(["mount", "fs", "device", "counters"])]
    elif k == 13:
        r["ts"] = rng.choice([946684799.0, 4102444801, 0, float(2**40), 1764000000])
    elif k == 14:
        r["interval_s"] = rng.choice([0, -1, 3600, 3600.5, 1e-9, 10])
    elif k == 15:
        r["schema"] = rng.choice([2, "1", 1.0, True, 0])
    elif k == 16:
        r["probe"] = {"bytes": 1, "seconds": 1.0, "chunk_bytes": 1, "mib_s": 1.0,
                      "compact_stall": 0, "allocstall": 0}
        f = rng.choice(list(wire.PROBE_FIELDS) + ["extra"])
        if rng.random() < 0.3:
            r["probe"].pop(f, None)
        else:
            r["probe"][f] = rng.choice(BAD_VALUES)
    elif k == 17:
        r["settings"] = {rng.choice(["thp", "Bad Name"]): rng.choice(HOSTILE_STRINGS + [1])}
    elif k == 18:
        r["settings"] = {f"s{j}": "v" for j in range(rng.choice([32, 33]))}
    elif k == 19:
        r[rng.choice(["host_id", "boot_id", "agent"])] = rng.choice(HOSTILE_STRINGS + [7])
    elif k == 20:
        return json.dumps(r, indent=rng.choice([None, 1])).encode()   # whitespace
    elif k == 21:   # duplicate key: Python keeps the last one
        b = _enc(r)
        return b.replace(b'"seq":', b'"seq":"dup","seq":', 1)
    elif k == 22:   # escaped key names are the same names to a JSON parser
        return _enc(r).replace(b'"compact_stall"', b'"compact_st\\u0061ll"', 1)
    elif k == 23:
        b = _enc(r)
        return rng.choice([b[: rng.randrange(1, len(b))], b"\xef\xbb\xbf" + b, b + b"x",
                           b.replace(b"0.62", b"NaN"), b.replace(b"0.62", b"1e999"),
                           b.replace(b"0.62", b"1" + b"0" * 400), bytes(rng.randrange(256)
                                                                      for _ in range(40))])
    elif k == 24:
        r["seq"] = rng.choice([2**63 - 1, 10**18, 10**19, -5])
    elif k == 25:
        r["counters"]["compact_stall"] = rng.choice([10**18, 2**63 - 1, 10**19, 2**63])
    return _enc(r)


def _python_ok(value: bytes) -> bool:
    return python_verdict(value)[0] is not None


def test_valid_records_take_the_vectorised_path_and_keep_their_values():
    rng = random.Random(3)
    recs = [varied_record(rng, i) for i in range(400)]
    out = decode_batch([wire.encode(r) for r in recs])
    assert out.rejected == []
    assert out.python_accepted == 0, "valid compact records must not need the Python path"
    assert out.good["row"].to_list() == list(range(400))
    for r, row in zip(recs, out.good.iter_rows(named=True)):
        assert (row["host_id"], row["boot_id"], row["seq"], row["ts"]) == \
            (r["host_id"], r["boot_id"], r["seq"], r["ts"])
        assert row["kernel"] == r["labels"]["kernel"]
        assert row["compact_stall"] == r["counters"]["compact_stall"]
        assert [m["fs"] for m in row["mounts"]] == [m["fs"] for m in r["mounts"]]


def test_vectorised_verdict_equals_schema_decode_on_hostile_mutations():
    rng = random.Random(11)
    bases = [varied_record(rng, i) for i in range(30)]
    values = [mutate(rng, rng.choice(bases)) for _ in range(1500)]
    # valid records interleaved, so every chunk mixes good and bad
    values += [wire.encode(b) for b in bases]
    rng.shuffle(values)
    out = decode_batch(values)
    accepted = set(out.good["row"].to_list())
    rejected = dict(out.rejected)
    assert accepted.isdisjoint(rejected) and len(accepted) + len(rejected) == len(values)
    for i, v in enumerate(values):
        expect_ok = _python_ok(v)
        assert (i in accepted) == expect_ok, (v[:300], rejected.get(i))
        if not expect_ok:
            try:
                wire.decode(v)
                expected_reason = None
            except wire.SchemaError as e:
                expected_reason = str(e)
            except Exception:
                expected_reason = None
            if expected_reason is not None:
                assert rejected[i] == expected_reason
    assert len(rejected) > 500 and len(accepted) > 300   # the mutations bite both ways


def test_good_records_sharing_a_batch_with_garbage_are_all_kept():
    good = [wire.encode(wire.example_record(seq=i)) for i in range(5000)]
    values = list(good)
    for pos in (0, 17, 2500, 4999):
        values.insert(pos, b"\x00\xffnot json")
    out = decode_batch(values)
    assert out.good.height == 5000
    assert [r for r, _ in out.rejected] == [0, 17, 2500, 4999]
    assert all(reason.startswith("record:") for _r, reason in out.rejected)


def test_record_key_metrics_equal_schema_key_metrics_per_filesystem():
    rng = random.Random(5)
    recs = [varied_record(rng, i) for i in range(300)]
    out = decode_batch([wire.encode(r) for r in recs])
    km = record_key_metrics(out.good)
    seen = 0
    for row in km.iter_rows(named=True):
        rec = recs[row["row"]]
        fs = None if row["fs"] == "none" else row["fs"]
        assert row["fs"] in wire.fs_of(rec)
        expect = wire.key_metrics(rec, fs)
        for m in wire.KEY_METRICS:
            a, b = row[m], expect[m]
            assert (a is None) == (b is None), (m, a, b)
            if a is not None:
                assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (m, a, b)
        seen += 1
    assert seen == sum(len(wire.fs_of(r)) for r in recs)


def test_future_timestamps_are_rejected_against_the_pipeline_clock():
    now = 1764000000.0
    vals = [wire.encode(wire.example_record(seq=0, ts=now + 5)),
            wire.encode(wire.example_record(seq=1, ts=now + 4000))]
    out = decode_batch(vals, now=now, max_future_s=600)
    assert out.good["seq"].to_list() == [0]
    assert out.rejected[0][0] == 1 and out.rejected[0][1].startswith("ts:")


def test_trailing_newline_in_a_label_is_rejected_on_both_sides():
    rec = wire.example_record()
    rec["labels"]["fleet"] = "payments\n"
    with pytest.raises(wire.SchemaError):
        wire.validate(rec)
    out = decode_batch([_enc(rec)])
    assert out.good.height == 0   # it would become a label value
    assert out.rejected[0][1].startswith("labels.fleet")


def test_vectorised_checks_alone_never_accept_what_schema_rejects():
    """The same mutations, judged by the vectorised checks only (no Python fallback):
    whatever they accept, schema.decode accepts too; and they accept the valid ones."""
    from foliowatch.pipeline import decode as dec

    rng = random.Random(23)
    bases = [varied_record(rng, i) for i in range(30)]
    values = [mutate(rng, rng.choice(bases)) for _ in range(1500)]
    values = [v for v in values if not dec.screen([v])[0] and dec._parse([v]) is not None]
    values += [wire.encode(b) for b in bases]
    df = dec._parse(values)
    assert df is not None   # every value parses: the whole frame takes the vectorised path
    ok = df.select(checks.checks(pl.col("d"), pl.col("raw"))).to_series()
    text_ok = checks.text_checks(df)
    vector_ok = (ok & text_ok).to_list()
    for v, accepted in zip(values, vector_ok):
        if accepted:
            assert _python_ok(v), v[:300]
    assert all(vector_ok[-len(bases):])
    assert sum(vector_ok) > 100 and vector_ok.count(False) > 500


def test_a_bom_first_in_the_batch_is_rejected_like_schema_does():
    good = wire.encode(wire.example_record(seq=1))
    out = decode_batch([b"\xef\xbb\xbf" + good, good])
    assert out.good["row"].to_list() == [1]
    assert out.rejected[0][0] == 0 and out.rejected[0][1].startswith("record:")


# -- the canonical layout: one pattern pass -------------------------------------------
def _fast_path_accepts(values):
    """Per value: accepted by the canonical pattern and its numeric checks alone (what
    decode_batch then accepts without any other check)."""
    from foliowatch.pipeline import decode as dec
    text, _bad = dec._as_text(values)
    canon = checks.canonical(text).to_list()
    out = [False] * len(values)
    rows = [i for i, c in enumerate(canon) if c]
    # the pattern lets a repeated counter or gauge name through (so does schema.decode,
    # keeping the last); the strict parser refuses a repeated kept one, and decode_batch
    # then takes the general path: such rows are not accepted by this path alone
    frames, unparsed = [], []
    dec._parse_bisect([values[i] for i in rows], 0, frames, unparsed,
                      dt=dec.canonical_dtype(checks))
    for df in frames:
        ok = df.select(checks.canonical_checks(pl.col("d"))).to_series().to_list()
        for j, good in zip(df["row"].to_list(), ok):
            out[rows[j]] = good
    return out


def _same_flat_row(got: dict, value: bytes) -> None:
    want, reason = python_verdict(value)
    assert reason is None, (value[:300], reason)
    for k, v in want.items():
        assert got[k] == v, (k, got[k], v, value[:300])


def test_the_fleets_layouts_take_the_one_pattern_path():
    """Simulator records and the agent's layouts (with settings, probe and agent in the
    orders each writes them) are proven by the pattern; values equal schema.decode's."""
    from foliowatch.pipeline import decode as dec
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.frames import simulate_frame, to_wire_json

    sc = load_scenario("seed-iomap-arm64-xfs", hosts=50, hours=0.5, seed=2)
    sim = [v for ch in simulate_frame(sc, 2) for v in to_wire_json(ch).cast(pl.Binary)]
    assert any(b'"probe"' in v for v in sim)
    agent = []
    for i in range(20):
        r = wire.example_record(seq=i)
        if i % 2:
            r["probe"] = {"bytes": 1 << 28, "seconds": 0.5, "chunk_bytes": 1 << 20,
                          "mib_s": 512.0, "compact_stall": i, "allocstall": 0}
        if i % 3 == 0:
            del r["settings"]
        agent.append(wire.encode(r))
    values = sim + agent
    assert all(checks.canonical(dec._as_text(values)[0]))
    out = decode_batch(values)
    assert out.rejected == [] and out.python_accepted == 0
    assert out.good.height == len(values)
    for row in out.good.filter(pl.col("row") % 37 == 0).iter_rows(named=True):
        _same_flat_row(row, values[row["row"]])


NUMBER_VARIANTS = [b"0", b"-0", b"7", b"-7", b"1.5", b"-1.5", b"1e5", b"1E+5", b"1e-5", b"01",
                   b"1.", b".5", b"1e", b"1e999", b"NaN", b"Infinity", b"true", b"null",
                   b'"1"', b"9" * 18, b"9" * 19, b"1" + b"0" * 18, b"0.1234567890123456789",
                   b"123456789012345678.5", b"1e99", b"-1e99", b"[1]", b"{}"]
STRING_VARIANTS = [b"", b"a", b"a" * 63, b"a" * 64, b"a" * 65, b"h" * 127, b"h" * 128,
                   b"h" * 129, b"/" + b"p" * 255, b"/" + b"p" * 256, b"a b", b"a\\u0041",
                   b"a\\n", b"caf\xc3\xa9", b"x\xff", b"-lead", b"a:b", b"a@b", b"a+b~c",
                   b"../etc", b"/ok/path", b"ok_name", b"Upper", b"9lead", b"xfs", b"ntfs",
                   b"arm64", b"aarch64"]
DANGEROUS_BYTES = b'0123456789-+.eE",:{}[] \\\n\tazAZ_/@~\x00\xff'


def canonical_mutation(rng: random.Random, base: bytes) -> bytes:
    import re as _re
    k = rng.randrange(7)
    if k == 0:      # one byte replaced by a byte that matters to JSON or the alphabets
        i = rng.randrange(len(base))
        return base[:i] + bytes([rng.choice(DANGEROUS_BYTES)]) + base[i + 1:]
    if k == 1:      # one byte inserted
        i = rng.randrange(len(base) + 1)
        return base[:i] + bytes([rng.choice(DANGEROUS_BYTES)]) + base[i:]
    if k == 2:      # a span deleted
        i = rng.randrange(len(base))
        return base[:i] + base[i + rng.randrange(1, 12):]
    if k == 3:      # a span duplicated (repeated keys, members, objects)
        i = rng.randrange(len(base))
        j = min(len(base), i + rng.randrange(1, 80))
        return base[:j] + base[i:j] + base[j:]
    if k == 4:      # one number replaced
        nums = list(_re.finditer(rb":(-?[0-9][0-9.eE+-]*)", base))
        m = rng.choice(nums)
        return base[:m.start(1)] + rng.choice(NUMBER_VARIANTS) + base[m.end(1):]
    if k == 5:      # one string (key or value) replaced
        strs = list(_re.finditer(rb'"([^"]*)"', base))
        m = rng.choice(strs)
        return base[:m.start(1)] + rng.choice(STRING_VARIANTS) + base[m.end(1):]
    # a whole member removed
    members = list(_re.finditer(rb',"[a-z_]+":(?:\{[^{}]*\}|[^,{}\[\]]+)', base))
    m = rng.choice(members)
    return base[:m.start()] + base[m.end():]


def test_the_one_pattern_path_never_accepts_what_schema_rejects():
    """Byte-level and targeted mutations of canonical records: whatever the pattern and
    its numeric checks accept, schema.decode accepts too, with the same values."""
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.frames import simulate_frame, to_wire_json

    rng = random.Random(29)
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=20, hours=0.2, seed=4)
    bases = [v for ch in simulate_frame(sc, 4) for v in to_wire_json(ch).cast(pl.Binary)][:200]
    bases += [wire.encode(varied_record(rng, i)) for i in range(100)]
    values = [canonical_mutation(rng, rng.choice(bases)) for _ in range(12000)]
    fast = _fast_path_accepts(values)
    accepted = 0
    for v, ok in zip(values, fast):
        if ok:
            accepted += 1
            assert _python_ok(v), v[:400]
    assert 1000 < accepted < len(values) - 3000   # the mutations bite both ways
    # and decode_batch as a whole: same verdicts as schema.decode, same values
    out = decode_batch(values)
    good = {r["row"]: r for r in out.good.iter_rows(named=True)}
    for i, v in enumerate(values):
        assert (i in good) == _python_ok(v), v[:400]
    for i in list(good)[::53]:
        _same_flat_row(good[i], values[i])


# -- the field table is the one source: its limits hold alike on every path -----------
def _vector_verdicts(values, checks=None):
    """Per value: accepted by the vectorised checks alone (canonical path, or the general
    path's column and text checks), without the Python fallback."""
    from foliowatch.pipeline import decode as dec
    from foliowatch.pipeline.wire_checks import DEFAULT
    checks = checks or DEFAULT
    text, _bad = dec._as_text(values)
    canon = checks.canonical(text).to_list()
    out = []
    for v, c in zip(values, canon):
        df = dec._parse([v], checks=checks, dt=dec.canonical_dtype(checks) if c else None)
        if df is None:
            out.append(False)
            continue
        if c:
            ok = df.select(checks.canonical_checks(pl.col("d"))).item()
        else:
            ok = df.select(checks.checks(pl.col("d"), pl.col("raw"))).item() \
                and checks.text_checks(df)[0]
        out.append(bool(ok))
    return out


def _boundary_cases(fields, path=()):
    """(path, value, int64_edge) around every bound, enumeration and length in the table."""
    for f in fields:
        p = path + (f.name,)
        if f.kind in (wire.INT, wire.FLOAT):
            step = (lambda x, d: x + d) if f.kind == wire.INT else \
                (lambda x, d: math.nextafter(x, math.inf if d > 0 else -math.inf))
            conv = int if f.kind == wire.INT else float
            for bound, outward in ((f.minimum, -1), (f.maximum, +1)):
                if bound is None:
                    continue
                b = conv(bound)
                edge = f.kind == wire.INT and abs(b) >= wire.INT64_MAX
                yield p, b, edge
                yield p, step(b, outward), edge
                yield p, step(b, -outward), edge
            for c in f.choices or ():
                yield p, c, False
                yield p, c + 1, False
        if f.kind == wire.STR:
            for c in f.choices or ():
                yield p, c, False
                yield p, c + "x", False
            if f.max_len and not f.choices:
                yield p, "a" * f.max_len if f.alphabet.first != "/" else "/" * f.max_len, False
                yield p, "a" * (f.max_len + 1), False
        if f.kind == wire.OBJECT:
            yield from _boundary_cases(f.members, p)


def _with(rec, path, value):
    rec = copy.deepcopy(rec)
    target = rec
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return rec


def _other_layout(rec):
    """Not the canonical layout (the general path's): the identity last, labels' members
    reversed."""
    out = {k: v for k, v in rec.items() if k not in ("host_id", "boot_id", "seq")}
    out["labels"] = dict(reversed(list(rec["labels"].items())))
    return {**out, "seq": rec["seq"], "boot_id": rec["boot_id"], "host_id": rec["host_id"]}


PROBE = {"bytes": 1 << 28, "seconds": 1.5, "chunk_bytes": 1 << 20, "mib_s": 170.7,
         "compact_stall": 3, "allocstall": 0}


def test_every_bound_in_the_field_table_holds_alike_on_every_path():
    """Each bound, enumeration and length of schema.FIELDS, at the limit and one step
    either side, in the canonical layout and in another one: the vectorised checks
    accept exactly what schema.decode accepts (beyond int64 they may only refuse), and
    decode_batch's reason names the field."""
    base = wire.example_record(probe=dict(PROBE))
    values, expect, edges, fields = [], [], [], []
    for path, value, edge in _boundary_cases(wire.FIELDS):
        if path == ("schema",):
            continue   # the version gate, tested on its own
        rec = _with(base, path, value)
        for layout in (wire._ordered(wire.FIELDS, rec), _other_layout(rec)):
            values.append(_enc(layout))
            try:
                wire.validate(rec)
                expect.append(True)
            except wire.SchemaError as e:
                expect.append(False)
                assert e.field == ".".join(path), (path, value, str(e))
            edges.append(edge)
            fields.append(".".join(path))
    assert len(values) > 150 and expect.count(False) > 50 and expect.count(True) > 50
    got = _vector_verdicts(values)
    for v, want, have, edge in zip(values, expect, got, edges):
        assert have == want or (edge and not have), (v[:200], want, have)
    # the compiled pass: the canonical layouts (even rows) exactly as the table says,
    # int64 edges included (it reads 19-digit integers exactly)
    native = [r is not None for r in _native_rows(values)]
    for i, (v, want, have) in enumerate(zip(values, expect, native)):
        assert have == (want and i % 2 == 0), (v[:200], want, have)
    _assert_native_exact(values)
    out = decode_batch(values)
    for row, reason in out.rejected:
        assert reason.startswith(fields[row] + ":"), (fields[row], reason)
    assert out.good.height == expect.count(True)


def test_a_table_edit_changes_every_path_at_once():
    """A schema change is one edit: a tighter interval bound and a new optional counter
    map, made only in a copy of the field table, are enforced alike by the strict
    validator, the canonical pattern and the general path's checks."""
    from dataclasses import replace

    from foliowatch.pipeline.wire_checks import WireChecks

    trace = wire.Field("trace", wire.MAP, required=False, value=wire.DELTA, max_items=8)
    fields = tuple(replace(f, maximum=60.0) if f.name == "interval_s" else f
                   for f in wire.FIELDS)
    fields = fields[:-1] + (trace,) + fields[-1:]
    checks = WireChecks(fields)
    base = wire.example_record()
    cases = [(dict(base, interval_s=60.0), True), (dict(base, interval_s=60.5), False),
             (dict(base, trace={"compact_order_9": 4}), True),
             (dict(base, trace={"compact_order_9": -4}), False),
             (dict(base, trace={f"o{i}": 1 for i in range(9)}), False),
             (dict(base, trace={"Bad": 1}), False)]
    values = []
    for rec, ok in cases:
        try:
            wire.validate(rec, fields)
            assert ok, rec
        except wire.SchemaError:
            assert not ok, rec
        values += [_enc(wire._ordered(fields, rec)), _enc(_other_layout(rec))]
    want = [ok for _rec, ok in cases for _layout in (0, 1)]
    assert _vector_verdicts(values, checks) == want
    # the compiled pass reads the edited table too: the canonical layouts as the table
    # says, the other layouts left to the exact path
    native = [r is not None for r in _native_rows(values, checks)]
    assert native == [ok and layout == 0 for _rec, ok in cases for layout in (0, 1)]
    out = decode_batch(values, checks=checks)
    assert sorted(out.good["row"].to_list()) == [i for i, ok in enumerate(want) if ok]
    # the default table is untouched: a 60.5 s interval is fine there, and a trace map is
    # a member it does not name, which a reader ignores (a negative delta in it included)
    assert decode_batch(values[2:4]).good.height == 2
    assert decode_batch(values[4:8]).good.height == 4
    assert not any("trace" in c for c in decode_batch(values[4:8]).good.columns)


# -- hypothesis: JSON corner cases aimed at the canonical (fast) path -----------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# number tokens schema v1 must refuse or accept by kind: ints written as floats or
# strings, booleans and null for numbers, non-standard constants, huge and long numbers
NUMBER_TOKENS = st.one_of(
    st.sampled_from([b"1.0", b"-0", b"-0.0", b'"7"', b"true", b"false", b"null", b"NaN",
                     b"-NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"01",
                     b"1.", b".5", b"+1", b"0x10", b"1e5", b"1E-3", b"[1]", b'{"a":1}',
                     b"9" * 18, b"9" * 19, b"9" * 400, b"18446744073709551616",
                     b"9223372036854775807", b"9223372036854775808", b"1" + b"0" * 18]),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: repr(x).encode()))
STRING_TOKENS = st.one_of(
    st.sampled_from([b'""', b'"a\\u0062"', b'"a\\"b"', b'"caf\\u00e9"', b'"x\\n"',
                     b'"\\ud800"', b'"a\\/b"', b'"\xff\xfe"', b'"\xc3\xa9"', b"1", b"null",
                     b'{"a":"b"}', b'["xfs"]', b'"' + b"a" * 65 + b'"',
                     b'"' + b"h" * 129 + b'"']),
    st.text(max_size=12).map(lambda t: json.dumps(t).encode()))
# where an unknown member can go: every object of the record
OBJECT_OPENERS = [b'{"schema"', b'"labels":{', b'"counters":{', b'"gauges":{',
                  b'"mounts":[{', b'"probe":{', b'"settings":{']


@st.composite
def fast_path_mutants(draw):
    """A canonical record (simulator-like values) with one JSON corner case spliced into
    its bytes: a number or string token replaced, a member or map entry repeated with
    another value, an unknown member (scalar or nested object) added to some object,
    or a non-UTF-8 byte."""
    import re as _re
    rec = wire.example_record(seq=draw(st.integers(0, 2**62)),
                              ts=draw(st.floats(1.5e9, 2e9)),
                              probe=dict(PROBE) if draw(st.booleans()) else None)
    if rec["probe"] is None:
        del rec["probe"]
    base = wire.encode(rec)
    kind = draw(st.sampled_from(["number", "string", "repeat", "unknown", "bytes"]))
    if kind == "number":
        nums = list(_re.finditer(rb'":(-?[0-9][0-9.eE+-]*)', base))
        m = nums[draw(st.integers(0, len(nums) - 1))]
        return base[:m.start(1)] + draw(NUMBER_TOKENS) + base[m.end(1):]
    if kind == "string":
        strs = list(_re.finditer(rb'"[^"]*"', base))
        m = strs[draw(st.integers(0, len(strs) - 1))]
        return base[:m.start()] + draw(STRING_TOKENS) + base[m.end():]
    if kind == "repeat":   # a key repeated: Python keeps the last value
        keys = list(_re.finditer(rb'"([a-z_0-9]+)":(-?[0-9][0-9.eE+-]*|"[^"]*")', base))
        m = keys[draw(st.integers(0, len(keys) - 1))]
        other = draw(st.one_of(NUMBER_TOKENS, STRING_TOKENS))
        dup = b'"' + m.group(1) + b'":' + other + b","
        at = m.start() if draw(st.booleans()) else m.end() + 1
        if at > m.start():   # after the original: the copy wins in schema.decode
            dup = b"," + dup[:-1]
            at = m.end()
        return base[:at] + dup + base[at:]
    if kind == "unknown":
        opener = draw(st.sampled_from([o for o in OBJECT_OPENERS if o in base]))
        at = base.index(opener) + len(opener) - (len(b'"schema"') if opener == b'{"schema"'
                                                   else 0)
        name = draw(st.sampled_from([b"extra", b"zz_new_counter", b"Bad Name", b"", b"a"]))
        value = draw(st.one_of(NUMBER_TOKENS, STRING_TOKENS,
                               st.just(b'{"nested":{"deep":[1,{"x":null}]}}')))
        member = b'"' + name + b'":' + value
        if base[at:at + 1] == b"}":
            return base[:at] + member + base[at:]
        return base[:at] + member + b"," + base[at:]
    i = draw(st.integers(0, len(base) - 1))
    return base[:i] + draw(st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\x00"])) + base[i:]


def _schema_reason(value: bytes):
    """The pipeline's reference verdict: ``schema.decode``, then the flat row, which also
    refuses a sum of in-range counters that leaves the 64-bit column."""
    return python_verdict(value)[1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fast_path_mutants(), min_size=1, max_size=12))
def test_fast_path_corner_cases_get_schema_decodes_verdict_reason_and_values(mutants):
    """JSON corner cases spliced into canonical records (ints as floats or strings,
    booleans, NaN/Infinity, huge ints, repeated keys, unknown members and nested
    objects, non-UTF-8 bytes), mixed with valid records in one batch: the fast path
    alone never accepts what the Python path rejects (``python_verdict``: schema.decode,
    then the flat row), and decode_batch gives every row its verdict, reason and values."""
    valid = [wire.encode(wire.example_record(seq=i)) for i in range(3)]
    values = valid[:1] + mutants + valid[1:]
    for v, fast in zip(values, _fast_path_accepts(values)):
        if fast:
            assert _schema_reason(v) is None, v[:400]
    _assert_native_exact(values)   # the compiled pass alone, values bit for bit
    out = decode_batch(values)
    good = {r["row"]: r for r in out.good.iter_rows(named=True)}
    rejected = dict(out.rejected)
    for i, v in enumerate(values):
        reason = _schema_reason(v)
        if reason is None:
            assert i in good, (v[:400], rejected.get(i))
            _same_flat_row(good[i], v)
        else:
            assert rejected.get(i) == reason, (v[:400], rejected.get(i), reason)


# -- the compiled pass (pipeline/native, built by scripts/bootstrap.sh) ----------------
from foliowatch.pipeline import native_decode  # noqa: E402


def _native_rows(values, checks=None):
    """Per value: its flat row when the compiled pass alone accepts it, else None."""
    from foliowatch.pipeline.wire_checks import DEFAULT
    dec = native_decode.decoder(checks or DEFAULT)
    assert dec is not None, "the native decoder is not built: run scripts/bootstrap.sh"
    good, rest = dec.decode(values)
    out = [None] * len(values)
    for row in good.iter_rows(named=True):
        out[row["row"]] = row
    assert sorted(set(range(len(values))) - set(rest)) == sorted(good["row"].to_list())
    return out


def _same_bits(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and a == b \
            and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def _assert_native_exact(values, checks=None):
    """Whatever the compiled pass accepts, schema.decode accepts, with the same flat row
    (floats bit for bit, the sign of zero included); returns how many it accepted."""
    accepted = 0
    for v, got in zip(values, _native_rows(values, checks)):
        if got is None:
            continue
        accepted += 1
        want, reason = python_verdict(v, (checks.fields if checks else wire.FIELDS))
        assert reason is None, (v[:400], reason)
        for k, x in want.items():
            assert _same_bits(got[k], x), (k, got[k], x, v[:400])
    return accepted


def test_the_bootstrap_builds_the_native_decoder_and_decode_batch_uses_it():
    from foliowatch.pipeline.wire_checks import DEFAULT
    assert native_decode.decoder(DEFAULT) is not None
    values = [wire.encode(wire.example_record(seq=i)) for i in range(50)]
    rows = _native_rows(values)
    assert all(r is not None for r in rows)
    out = decode_batch(values)
    assert out.good.height == 50 and out.python_accepted == 0


def test_the_native_pass_never_accepts_what_schema_rejects_on_canonical_mutations():
    """The byte-level and targeted mutations of canonical records and the hostile
    mutations of whole records, judged by the compiled pass alone: every record it
    accepts, schema.decode accepts with the same values; it accepts the fleet's layouts."""
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.frames import simulate_frame, to_wire_json

    rng = random.Random(31)
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=20, hours=0.2, seed=4)
    bases = [v for ch in simulate_frame(sc, 4) for v in to_wire_json(ch).cast(pl.Binary)][:200]
    bases += [wire.encode(varied_record(rng, i)) for i in range(100)]
    values = [canonical_mutation(rng, rng.choice(bases)) for _ in range(12000)]
    values += [mutate(rng, wire.decode(rng.choice(bases))) for _ in range(3000)]
    accepted = _assert_native_exact(values + bases)
    assert all(r is not None for r in _native_rows(bases))
    assert 1000 < accepted < len(values) - 3000   # the mutations bite both ways


def _with_token(member: bytes, token: bytes, probe: bool = True) -> bytes:
    """A canonical record with the value of its first member ``member`` (``"name":``)
    replaced by the raw JSON ``token``."""
    import re as _re
    rec = wire.example_record(probe=dict(PROBE) if probe else None)
    if not probe:
        del rec["probe"]
    base = wire.encode(rec)
    m = _re.search(_re.escape(member) + rb'(-?[0-9][0-9.eE+-]*|"[^"]*")', base)
    assert m, member
    return base[:m.start(1)] + token + base[m.end(1):]


FLOAT_MEMBERS = [b'"ts":', b'"interval_s":', b'"uptime_s":', b'"frag_unusable_1m":',
                 b'"mem_available_bytes":', b'"mib_s":', b'"seconds":']
INT_MEMBERS = [b'"seq":', b'"cpus":', b'"mem_bytes":', b'"page_size":', b'"compact_stall":',
               b'"allocstall_normal":', b'"nr_dirtied":', b'"write_bytes":', b'"write_ios":',
               b'"chunk_bytes":']
EDGE_NUMBERS = [
    b"0", b"-0", b"0.0", b"-0.0", b"0e0", b"-0e5", b"1", b"-1", b"10", b"1e5", b"1E+5",
    b"1e-5", b"2.5E-3", b"1e22", b"1e23", b"123456789e-30", b"1.5e300", b"1e307", b"9.9e307",
    b"1e308", b"1.7976931348623157e308", b"1e309", b"1e-320", b"4.9e-324", b"2e-324",
    b"1e-400", b"2.2250738585072014e-308", b"2.2250738585072011e-308",
    b"9007199254740993", b"9007199254740993.0", b"9007199254740992.5",
    b"1.00000000000000011102230246251565404236316680908203125",
    b"0.1000000000000000055511151231257827021181583404541015625",
    b"123456789012345678901234567890", b"0.000000000000000000000000001234567890123456789",
    b"1" + b"0" * 40 + b".5", b"0." + b"0" * 30 + b"1", b"3" * 300, b"0." + b"7" * 300,
    b"9223372036854775806", b"9223372036854775807", b"9223372036854775808",
    b"-9223372036854775808", b"-9223372036854775809", b"18446744073709551616",
    b"946684799", b"946684800", b"946684800.0000001", b"946684799.9999999", b"4102444800",
    b"4102444800.0000005", b"3600", b"3600.0000000000005", b"3599.9999999999995",
    b"1e-9", b"4096", b"4097", b"65536", b"1.0", b"01", b"1.", b".5", b"+1", b"1e", b"-",
    b"1e+", b"NaN", b"Infinity", b"-Infinity"]


def test_number_edge_forms_get_schema_decodes_verdict_and_value_on_the_native_pass():
    """Exponents, signed zeros, long and halfway mantissas, subnormals, the double range,
    integers at int64 and at every bound ±1, in float and integer members of every
    object: the compiled pass never accepts what schema.decode rejects, converts every
    number as Python's float()/int() do, and accepts the plain forms."""
    values = [_with_token(m, t) for m in FLOAT_MEMBERS + INT_MEMBERS for t in EDGE_NUMBERS]
    accepted = _assert_native_exact(values)
    assert accepted > 300
    # the plain forms are the native pass's, not left to Python
    plain = [b"0", b"-0", b"-0.0", b"1e5", b"1e-5", b"9007199254740993", b"1e-400",
             b"2.2250738585072011e-308", b"0.1000000000000000055511151231257827021181583404541015625"]
    for t in plain:
        assert _native_rows([_with_token(b'"uptime_s":', t)])[0] is not None, t
    for t in (b"0", b"-0", b"9223372036854775807"):
        assert _native_rows([_with_token(b'"nr_dirtied":', t)])[0] is not None, t
    # and decode_batch as a whole gives every one the Python path's verdict and reason
    # (schema.decode's, or a sum of counters beyond the 64-bit columns)
    out = decode_batch(values)
    good = {r["row"]: r for r in out.good.iter_rows(named=True)}
    rejected = dict(out.rejected)
    for i, v in enumerate(values):
        reason = python_verdict(v)[1]
        assert (i in good) == (reason is None), (v[:300], rejected.get(i), reason)
        if reason is not None:
            assert rejected[i] == reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FLOAT_MEMBERS + INT_MEMBERS),
       st.one_of(
           st.from_regex(rb"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?\Z"),
           st.floats(allow_nan=False, allow_infinity=False).map(lambda x: repr(x).encode()),
           st.integers(-(2**65), 2**65).map(lambda i: str(i).encode())))
def test_random_numbers_convert_exactly_on_the_native_pass(member, token):
    """Any JSON number in any numeric member: the compiled pass's verdict and value are
    schema.decode's (it may only leave a record to the Python path)."""
    _assert_native_exact([_with_token(member, token)])


def test_escapes_unknown_and_reordered_members_are_left_to_the_exact_path():
    """What the canonical layout does not have (string escapes, members the table does
    not name, members in another order) is not accepted by the compiled pass, and
    decode_batch still gives schema.decode's verdict and values (a reader ignores
    unknown members)."""
    rec = wire.example_record(probe=dict(PROBE))
    base = wire.encode(rec)
    escaped = [base.replace(b'"payments-db"', b'"payments\\u002ddb"'),
               base.replace(b'"compact_stall"', b'"compact_st\\u0061ll"', 1),
               base.replace(b'"xfs"', b'"\\u0078fs"'),
               base.replace(b'"/var/lib/postgresql"', b'"\\/var\\/lib\\/postgresql"'),
               base.replace(b'"madvise"', b'"mad\\"vise"', 1)]
    unknown = [base.replace(b'{"schema":1,', b'{"schema":1,"extra":{"a":[1,2]},'),
               base.replace(b'"labels":{', b'"labels":{"team":"x",'),
               base.replace(b'"fs":"xfs",', b'"fs":"xfs","uuid":"u-1",'),
               base.replace(b'"mib_s":', b'"new_gauge":1.5,"mib_s":'),
               base[:-1] + b',"zz":null}']
    reordered = [_enc(_other_layout(rec)),
                 _enc({**{k: v for k, v in rec.items() if k != "labels"}, "labels": rec["labels"]}),
                 _enc(dict(rec, mounts=[dict(reversed(list(m.items()))) for m in rec["mounts"]])),
                 _enc(dict(rec, probe=dict(reversed(list(PROBE.items())))))]
    values = escaped + unknown + reordered
    assert all(r is None for r in _native_rows(values))
    out = decode_batch(values)
    good = {r["row"]: r for r in out.good.iter_rows(named=True)}
    rejected = dict(out.rejected)
    for i, v in enumerate(values):
        reason = python_verdict(v)[1]
        if reason is None:
            assert i in good, (v[:300], rejected.get(i))
            _same_flat_row(good[i], v)
        else:
            assert rejected.get(i) == reason
    assert good[0]["fleet"] == "payments-db" and len(good) >= len(values) - 1


def test_the_native_and_python_paths_give_the_same_frames(monkeypatch):
    """The fleet's records through decode_batch with and without the compiled pass:
    equal frames, column for column."""
    from polars.testing import assert_frame_equal

    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.frames import simulate_frame, to_wire_json
    from foliowatch.pipeline.wire_checks import DEFAULT

    sc = load_scenario("seed-iomap-arm64-xfs", hosts=200, hours=0.3, seed=6)
    values = [v for ch in simulate_frame(sc, 6) for v in to_wire_json(ch).cast(pl.Binary)]
    rng = random.Random(8)
    values += [wire.encode(varied_record(rng, i)) for i in range(300)]
    native = decode_batch(values)
    assert native_decode.decoder(DEFAULT) is not None
    monkeypatch.setenv(native_decode.DECODER_ENV, "python")
    assert native_decode.decoder(DEFAULT) is None
    python = decode_batch(values)
    monkeypatch.delenv(native_decode.DECODER_ENV)
    assert native.rejected == python.rejected == []
    assert_frame_equal(native.good, python.good)


def test_a_table_the_native_decoder_cannot_express_falls_back_loudly(caplog):
    """A field table the compiled layout cannot hold (here a bound that is not exactly a
    double) turns the native pass off for that table, says so once, and decode_batch
    still judges by that table."""
    from dataclasses import replace

    from foliowatch.pipeline.wire_checks import WireChecks

    fields = tuple(replace(f, maximum=2**62 + 1) if f.name == "ts" else f
                   for f in wire.FIELDS)
    checks = WireChecks(fields)
    values = [wire.encode(wire.example_record(seq=i)) for i in range(5)]
    with caplog.at_level("WARNING", logger="foliowatch.pipeline.native_decode"):
        out1 = decode_batch(values, checks=checks)
        out2 = decode_batch(values, checks=checks)
    assert native_decode.decoder(checks) is None
    said = [r.getMessage() for r in caplog.records if "compiled decoder is off" in r.getMessage()]
    assert len(said) == 1 and "ts maximum" in said[0], said
    assert out1.good.height == out2.good.height == 5


def test_without_the_native_module_the_pipeline_decodes_and_says_so_once(monkeypatch, caplog):
    import sys

    from foliowatch.pipeline.wire_checks import WireChecks

    monkeypatch.setitem(sys.modules, "foliowatch_wiredecode", None)   # import fails
    checks = WireChecks()
    values = [wire.encode(wire.example_record(seq=i)) for i in range(5)] + [b"{}"]
    with caplog.at_level("WARNING", logger="foliowatch.pipeline.native_decode"):
        out = decode_batch(values, checks=checks)
        decode_batch(values, checks=WireChecks())
    said = [r.getMessage() for r in caplog.records if "not installed" in r.getMessage()]
    assert len(said) == 1 and "scripts/bootstrap.sh" in said[0]
    assert out.good.height == 5 and out.rejected[0][0] == 5


def test_a_natively_decoded_frame_keeps_its_values_after_the_next_batches():
    """The compiled pass hands its column buffers over to the frame (Arrow C data
    interface, no copy): a frame must not share memory with the decoder's next batches,
    nor lose it when the decoder and the other frames are gone."""
    import gc

    from foliowatch.pipeline.wire_checks import WireChecks
    rng = random.Random(7)
    checks_ = WireChecks()
    first = [wire.encode(varied_record(rng, i)) for i in range(300)]
    want = [python_verdict(v, checks_.fields)[0] for v in first]
    dec = native_decode.decoder(checks_)
    assert dec is not None, "the native decoder is not built: run scripts/bootstrap.sh"
    kept, rest = dec.decode(first)
    assert rest == [] and kept.height == 300
    for i in range(5):   # other batches through the same layout, then dropped
        other = [wire.encode(varied_record(rng, 1000 * (i + 1) + j)) for j in range(400)]
        dec.decode(other)
    del dec, checks_
    gc.collect()
    for row in kept.iter_rows(named=True):
        w = want[row["row"]]
        for k, x in w.items():
            assert _same_bits(row[k], x), (k, row[k], x)


def test_a_few_records_the_native_pass_leaves_go_to_schema_decode_without_pyarrow():
    """Fewer than VECTORISED_MIN_ROWS leftovers of the compiled pass take schema.decode
    one by one (cheaper than an Arrow JSON read for a handful): same verdicts, and the
    pipeline process never loads pyarrow for them."""
    import subprocess
    import sys
    code = r"""
import json, sys
from foliowatch import schema as wire
from foliowatch.pipeline.decode import VECTORISED_MIN_ROWS, decode_batch, python_verdict
canon = [wire.encode(wire.example_record(seq=i)) for i in range(200)]
# valid records in another member order (the compiled pass leaves them), and garbage
odd = [json.dumps(json.loads(v), sort_keys=True, separators=(",", ":")).encode()
       for v in canon[:5]] + [b"{}", b"\xff"]
values = canon[:100] + odd + canon[100:]
out = decode_batch(values)
assert len(odd) < VECTORISED_MIN_ROWS
assert out.good.height == 205 and out.python_accepted == 5, (out.good.height, out.python_accepted)
assert [r for r, _ in out.rejected] == [105, 106], out.rejected
assert out.rejected[1][1] == python_verdict(b"\xff", wire.FIELDS)[1]
print("pyarrow" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "False", "pyarrow was loaded for a few leftover records"
