"""Wire schema v1: what it accepts, what it rejects (naming the field), round trips."""
import copy
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from foliowatch import schema
from foliowatch.schema import SchemaError, decode, encode, example_record, validate

pytestmark = pytest.mark.agent39


def rejects(record, field):
    with pytest.raises(SchemaError) as e:
        validate(record)
    assert e.value.field == field, str(e.value)
    return str(e.value)


def test_example_is_valid_and_round_trips():
    rec = example_record()
    assert decode(encode(rec)) == rec


@pytest.mark.parametrize("field", schema.REQUIRED_FIELDS[1:])
def test_missing_required_field_is_named(field):
    rec = example_record()
    del rec[field]
    assert "missing" in rejects(rec, field)


@pytest.mark.parametrize("label", list(schema.LABELS))
def test_missing_label_is_named(label):
    rec = example_record()
    del rec["labels"][label]
    rejects(rec, f"labels.{label}")


@pytest.mark.parametrize("path,value", [
    (("host_id",), 42), (("seq",), "7"), (("seq",), True), (("ts",), "now"),
    (("labels", "cpus"), 9.5), (("labels", "page_size"), "4096"),
    (("counters", "compact_stall"), 1.5), (("gauges", "uptime_s"), "1"),
    (("mounts",), {}), (("labels",), []),
])
def test_wrong_types_are_rejected(path, value):
    rec = example_record()
    target = rec
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    rejects(rec, ".".join(path))


def test_negative_delta_is_rejected_with_advice():
    rec = example_record()
    rec["counters"]["compact_stall"] = -3
    msg = rejects(rec, "counters.compact_stall")
    assert "negative" in msg and "reset" in msg


def test_negative_mount_delta_is_rejected():
    rec = example_record()
    rec["mounts"][0]["counters"]["write_bytes"] = -1
    rejects(rec, "mounts[0].counters.write_bytes")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_rejected(bad):
    rec = example_record()
    rec["gauges"]["frag_unusable_1m"] = bad
    rejects(rec, "gauges.frag_unusable_1m")
    rec = example_record(interval_s=bad)
    rejects(rec, "interval_s")


def test_nan_in_wire_bytes_is_rejected():
    raw = encode(example_record()).replace(b'"uptime_s":864000.0', b'"uptime_s":NaN')
    with pytest.raises(SchemaError):
        decode(raw)


def test_unknown_schema_version_is_rejected():
    for v in (0, 2, "1", None):
        msg = rejects(example_record(schema=v), "schema")
        assert "version" in msg


def test_oversized_kernel_release_is_rejected_as_cardinality_risk():
    rec = example_record()
    rec["labels"]["kernel"] = "6.6." + "x" * 10_000
    assert "cardinality" in rejects(rec, "labels.kernel")


def test_oversized_host_id_and_record_are_rejected():
    rejects(example_record(host_id="h" * 500), "host_id")
    rec = example_record()
    rec["counters"] = {f"c{i}": 1 for i in range(schema.MAX_COUNTERS + 1)}
    rejects(rec, "counters")
    with pytest.raises(SchemaError) as e:
        decode(b" " * (schema.MAX_RECORD_BYTES + 1))
    assert e.value.field == "record"


def test_label_with_path_or_control_characters_is_rejected():
    rec = example_record()
    rec["labels"]["fleet"] = "../../etc"
    rejects(rec, "labels.fleet")
    rec["labels"]["fleet"] = "db\nfleet"
    rejects(rec, "labels.fleet")


def test_a_writer_refuses_unknown_fields_and_labels():
    rejects(example_record(extra=1), "extra")
    rec = example_record()
    rec["labels"]["pod"] = "x"
    rejects(rec, "labels.pod")
    with pytest.raises(SchemaError, match="extra"):
        schema.encode(example_record(extra=1))


def test_a_reader_ignores_unknown_members_at_any_level_and_drops_them():
    rec = example_record()
    plain = decode(json.dumps(rec).encode())
    rec["added_by_a_newer_agent"] = {"nested": [1, {"x": None}]}
    rec["labels"]["pod"] = "x"
    rec["mounts"][0]["queue_depth"] = 7
    got = decode(json.dumps(rec).encode())
    assert got == plain
    assert "added_by_a_newer_agent" not in got and "pod" not in got["labels"]
    # what the table requires is still enforced exactly beside an unknown member
    del rec["labels"]["arch"]
    with pytest.raises(SchemaError, match="labels.arch"):
        decode(json.dumps(rec).encode())


def test_enumerated_values():
    rec = example_record()
    rec["labels"]["arch"] = "aarch64"
    rejects(rec, "labels.arch")
    rec = example_record()
    rec["mounts"][0]["fs"] = "ntfs-3g"
    rejects(rec, "mounts[0].fs")


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b"[1,2]", b"{", b"null", b'"x"'])
def test_garbage_bytes_are_rejected(raw):
    with pytest.raises(SchemaError):
        decode(raw)


def test_key_metrics_are_absent_not_zero():
    rec = example_record()
    del rec["counters"]["compact_stall"]
    m = schema.key_metrics(rec, "xfs")
    assert m["compact_stall_per_s"] is None
    assert m["write_mib_s"] == pytest.approx(1073741824 / 10 / 1048576)
    assert m["allocstall_per_s"] == pytest.approx(0.5)
    assert m["probe_mib_s"] is None
    assert schema.key_metrics(rec, "ext4")["write_mib_s"] is None


# --- property-based round trips --------------------------------------------------------
names = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
label_values = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+~-]{0,30}\Z")
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)


@st.composite
def records(draw):
    rec = example_record()
    rec["seq"] = draw(st.integers(0, 2**62))
    rec["ts"] = draw(st.floats(1e9, 4e9))
    rec["interval_s"] = draw(st.floats(0.001, 3600))
    rec["host_id"] = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,60}\Z"))
    for k in ("fleet", "role", "kernel", "instance_type"):
        rec["labels"][k] = draw(label_values)
    rec["labels"]["arch"] = draw(st.sampled_from(schema.ARCHES))
    rec["labels"]["page_size"] = draw(st.sampled_from(schema.PAGE_SIZES))
    rec["counters"] = draw(st.dictionaries(names, st.integers(0, 2**63 - 1), max_size=30))
    rec["gauges"] = draw(st.dictionaries(names, finite, max_size=30))
    return rec


@settings(max_examples=200, deadline=None)
@given(records())
def test_encode_decode_round_trip(rec):
    assert decode(encode(rec)) == rec


@settings(max_examples=200, deadline=None)
@given(records(), st.sampled_from(["counters", "gauges", "labels"]))
def test_validation_never_crashes_on_mutations(rec, where):
    bad = copy.deepcopy(rec)
    bad[where]["zz_" if where != "labels" else "zz"] = None
    with pytest.raises(SchemaError):
        validate(bad)
    # and on the wire it raises SchemaError, never another exception; except that an
    # unknown label is a newer writer's member, which a reader ignores
    if where == "labels":
        assert decode(json.dumps(bad).encode()) == rec
    else:
        with pytest.raises(SchemaError):
            decode(json.dumps(bad).encode())


def test_trailing_newline_in_a_label_is_rejected():
    rec = example_record()
    rec["labels"]["fleet"] = "prod\n"
    rejects(rec, "labels.fleet")
    rejects(example_record(host_id="h1\n"), "host_id")


def test_huge_integer_gauge_is_a_schema_error_not_a_crash():
    raw = encode(example_record()).replace(b'"uptime_s":864000.0', b'"uptime_s":' + b"9" * 400)
    with pytest.raises(SchemaError) as e:
        decode(raw)
    assert e.value.field == "gauges.uptime_s"


def test_encode_writes_the_canonical_layout_whatever_the_input_order():
    rec = example_record(probe={"bytes": 1, "seconds": 1.0, "chunk_bytes": 1, "mib_s": 1.0,
                                "compact_stall": 0, "allocstall": 0})
    shuffled = dict(reversed(list(rec.items())))
    shuffled["labels"] = dict(reversed(list(rec["labels"].items())))
    data = encode(shuffled)
    assert data == encode(rec)
    assert list(json.loads(data)) == [f.name for f in schema.FIELDS if f.name in rec]
    assert list(json.loads(data)["labels"]) == list(schema.LABELS)


def test_key_metrics_follow_the_key_metric_table():
    """Each metric of KEY_METRIC_TABLE computed from its row: a rate is the sum of its
    inputs over the interval and its scale (capped), a level the input itself."""
    rec = example_record(probe={"bytes": 1, "seconds": 1.0, "chunk_bytes": 1,
                                "mib_s": 321.5, "compact_stall": 0, "allocstall": 0})
    rec["counters"]["psi_memory_some_us"] = 10**9   # more than the interval: capped
    m = schema.key_metrics(rec)
    assert m["allocstall_per_s"] == pytest.approx((4 + 1) / 10.0)
    assert m["psi_memory_some_share"] == 1.0
    assert m["probe_mib_s"] == 321.5 and m["frag_unusable_1m"] == 0.62
    assert tuple(m) == schema.KEY_METRICS
    assert set(schema.WORSE_DIRECTION) == set(schema.KEY_METRICS)


def test_every_field_in_the_table_is_described():
    lines = schema.describe()
    for f in schema.FIELDS:
        assert any(line.startswith(f.name + " ") for line in lines), f.name
    assert any(line.startswith("ts ") and "[946684800, 4102444800]" in line for line in lines)


_KEYS = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True),
                  st.text(max_size=8), st.sampled_from(["a\nb", "", "B", "x" * 65]))
_VALUES = st.one_of(st.integers(-5, 2**64), st.booleans(), st.floats(allow_nan=True),
                    st.none(), st.text(max_size=3))


@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_quick_map_checks_decide_exactly_as_the_full_checks(counters, gauges):
    """The maps' quick test (the agent's plain case) accepts exactly what the entry by
    entry checks accept, and a rejected record gets the same message either way."""
    def outcome():
        rec = {**example_record(), "counters": counters, "gauges": gauges}
        try:
            schema.validate(rec)
            return "ok"
        except schema.SchemaError as e:
            return str(e)
    quick = outcome()
    saved = dict(schema._PLAIN_VALUES)
    schema._PLAIN_VALUES.clear()
    try:
        assert outcome() == quick
    finally:
        schema._PLAIN_VALUES.update(saved)


# --- the writer's quick test: the same rule, never looser ---------------------------------
class _Label(str):
    """A str subclass: valid for validate, not the quick test's exact type."""


_ODD = st.sampled_from([
    None, True, False, 0, -1, 1, 2**63 - 1, 2**63, 2**1100, 0.0, -0.0,
    1.5, float("nan"), float("inf"), -float("inf"), 1e308, 946684800.0, 946684799.9,
    4102444800.0, 4102444800.5, 3600.0, 3600.000001, 1, 4096, 16384, 3, "", "x", "x" * 65,
    "x" * 129, "a\n", "ext4", "zz", "arm64", "/", "/a b", "é", [], {}, [{}], {"a": 1},
    {"a": -1}, {"a": 1.0}, {"A": 1}, _Label("ok"), (1,), b"x"])


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


@st.composite
def mutated_records(draw):
    rec = draw(records())
    if draw(st.booleans()):
        rec["probe"] = {"bytes": 1, "seconds": 0.5, "chunk_bytes": 1, "mib_s": 2.0,
                        "compact_stall": 0, "allocstall": 0}
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(rec) if p]
        path = draw(st.sampled_from(paths))
        parent = rec
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["set", "delete", "add", "reorder"]))
        if action == "set":
            parent[path[-1]] = draw(_ODD)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["zz", "seq", "Bad", "a" * 70, 1]))] = draw(_ODD)
        elif action == "reorder" and isinstance(parent, dict):
            items = list(parent.items())
            parent.clear()
            parent.update(reversed(items))
    return rec


@settings(max_examples=600, deadline=None)
@given(mutated_records())
def test_the_quick_test_accepts_nothing_that_validate_refuses(rec):
    """``encode``'s quick test is the table's rule, only stricter: whatever it accepts
    passes ``validate`` and is already in the canonical layout, so the bytes are the
    same as through ``validate`` and ``_ordered``."""
    if schema.quick_valid(rec):
        validate(copy.deepcopy(rec))
        canonical = json.dumps(schema._ordered(schema.FIELDS, rec), separators=(",", ":"),
                               allow_nan=False, ensure_ascii=False).encode()
        assert encode(rec) == canonical
    else:
        try:
            expected = json.dumps(schema._ordered(schema.FIELDS, validate(copy.deepcopy(rec))),
                                  separators=(",", ":"), allow_nan=False,
                                  ensure_ascii=False).encode()
        except SchemaError as e:
            with pytest.raises(SchemaError) as raised:
                encode(rec)
            assert str(raised.value) == str(e)   # the same message as before
        else:
            assert encode(rec) == expected


@settings(max_examples=200, deadline=None)
@given(records())
def test_records_laid_out_in_table_order_take_the_quick_path(rec):
    assert schema.quick_valid(rec)
    assert schema.quick_valid({**rec, "probe": {"bytes": 1, "seconds": 0.5, "chunk_bytes": 1,
                                                "mib_s": 2.0, "compact_stall": 0,
                                                "allocstall": 0}}) is False  # out of order


_ANY_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_ANY_DELTA = st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([0, 1, 2**53 + 1, 2**63 - 1]))


@st.composite
def agent_like_records(draw):
    """Records of the agent's layout over the whole range of each value: any finite
    double (subnormals, -0.0, 1e308, integral ones), deltas up to 2^63-1, names and labels
    up to their length limits, settings, several mounts, a probe."""
    rec = draw(records())
    rec["ts"] = draw(st.floats(946684800.0, 4102444800.0))
    rec["interval_s"] = draw(st.floats(0.0, 3600.0, exclude_min=True))
    rec["counters"] = draw(st.dictionaries(
        st.from_regex(r"\A[a-z][a-z0-9_]{0,63}\Z"), _ANY_DELTA, max_size=80))
    rec["gauges"] = draw(st.dictionaries(names, _ANY_FLOAT, max_size=25))
    rec["mounts"] = [{"mount": draw(st.from_regex(r"\A/[A-Za-z0-9._/+-]{0,40}\Z")),
                      "fs": draw(st.sampled_from(schema.FILESYSTEMS)),
                      "device": draw(label_values),
                      "counters": draw(st.dictionaries(names, _ANY_DELTA, max_size=5))}
                     for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        rec["settings"] = draw(st.dictionaries(names, label_values, max_size=4))
    else:
        del rec["settings"]
    if draw(st.booleans()):
        rec["probe"] = {"bytes": draw(st.integers(0, 2**70)),
                        "seconds": draw(st.floats(0.0, allow_infinity=False)),
                        "chunk_bytes": draw(st.integers(0, 2**20)),
                        "mib_s": draw(st.floats(0.0, allow_infinity=False)),
                        "compact_stall": draw(st.integers(0, 10**6)),
                        "allocstall": draw(st.integers(0, 10**6))}
        rec["agent"] = rec.pop("agent")   # the table's order: probe before agent
    return rec


def _json_encoders_bytes(rec):
    return json.dumps(schema._ordered(schema.FIELDS, validate(copy.deepcopy(rec))),
                      separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


@settings(max_examples=500, deadline=None)
@given(agent_like_records())
def test_the_quick_path_writes_the_json_encoders_bytes(rec):
    """Records of the agent's layout take the quick path, and the text it writes from
    its formats is, byte for byte, what the JSON encoder writes after ``validate``."""
    text = schema.quick_text(rec)
    assert text is not None
    assert text.encode() == encode(rec) == _json_encoders_bytes(rec)


@settings(max_examples=500, deadline=None)
@given(agent_like_records(), st.data())
def test_the_quick_path_refuses_what_validate_refuses_with_its_message(rec, data):
    """One mutation of an agent-like record: ``encode`` refuses it exactly when
    ``validate`` does, with ``validate``'s message; what it accepts has the JSON
    encoder's bytes, whichever path wrote them."""
    paths = [p for p in _paths(rec) if p]
    path = data.draw(st.sampled_from(paths))
    parent = rec
    for step in path[:-1]:
        parent = parent[step]
    action = data.draw(st.sampled_from(["set", "delete", "add", "reorder"]))
    if action == "set":
        parent[path[-1]] = data.draw(st.one_of(_ODD, _ANY_FLOAT, st.integers()))
    elif action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(["zz", "seq", "Bad", "a" * 70, "a%d", 1]))] = \
            data.draw(_ODD)
    elif action == "reorder" and isinstance(parent, dict):
        items = list(parent.items())
        parent.clear()
        parent.update(reversed(items))
    try:
        expected = _json_encoders_bytes(rec)
    except SchemaError as e:
        assert schema.quick_text(rec) is None
        with pytest.raises(SchemaError) as raised:
            encode(rec)
        assert str(raised.value) == str(e)
    else:
        text = schema.quick_text(rec)
        assert text is None or text.encode() == expected
        assert encode(rec) == expected
