import json
import math

import pytest

from autoweld.quality.record import (
    GENESIS_MAC,
    MAC_DOMAIN,
    InspectionRecord,
    canonical_bytes,
    compute_mac,
    mac_matches,
)

KEY = b"k" * 32


def test_canonical_bytes_are_sorted_compact_json_without_the_mac(make_record):
    record = make_record(3)
    signed = InspectionRecord(**{**record.to_dict(), "prev_mac": GENESIS_MAC, "mac": "ff" * 32})
    raw = canonical_bytes(signed)
    assert raw.startswith(MAC_DOMAIN)
    data = json.loads(raw[len(MAC_DOMAIN) :])
    assert "mac" not in data
    assert data["prev_mac"] == GENESIS_MAC
    assert list(data) == sorted(data)
    assert b" " not in raw[len(MAC_DOMAIN) :].replace(b"VIN-", b"")
    # floats keep their exact value (repr round-trips)
    assert data["scores"]["patchcore"] == record.scores["patchcore"]


def test_mac_changes_with_every_field_and_with_prev_mac(make_record):
    base = InspectionRecord(**{**make_record(1).to_dict(), "prev_mac": GENESIS_MAC, "seq": 1})
    mac = compute_mac(KEY, base)
    variants = {
        "part_id": "VIN-other",
        "decision": "PASS",
        "fused_probability": 0.1500000001,
        "threshold": 0.49,
        "seq": 2,
        "prev_mac": "1" * 64,
        "scores": {"patchcore": 1.0, "student": 0.1},
        "plc_delivered": True,
        "station_id": "st-2",
        "key_id": "k9",
    }
    for name, value in variants.items():
        changed = InspectionRecord(**{**base.to_dict(), name: value})
        assert compute_mac(KEY, changed) != mac, name
    assert compute_mac(b"x" * 32, base) != mac
    signed = InspectionRecord(**{**base.to_dict(), "mac": mac})
    assert mac_matches(KEY, signed)
    assert not mac_matches(b"x" * 32, signed)


def test_ints_are_normalised_to_floats_so_storage_round_trips(make_record):
    record = make_record(0, fused_probability=1, threshold=0, scores={"a": 2})
    assert isinstance(record.fused_probability, float) and record.fused_probability == 1.0
    assert isinstance(record.scores["a"], float)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("station_id", "", "station_id"),
        ("part_id", None, "part_id"),
        ("bundle_sha256", "xyz", "bundle_sha256"),
        ("decision", "OK", "decision"),
        ("fused_probability", 1.5, "fused_probability"),
        ("fused_probability", math.nan, "fused_probability"),
        ("threshold", math.inf, "threshold"),
        ("scores", {"patchcore": math.nan}, "scores"),
        ("probabilities", {"patchcore": -0.1}, "probabilities"),
        ("scores", [1.0], "scores"),
        ("heatmap_sha256", "ABC", "heatmap_sha256"),
        ("plc_delivered", 1, "plc_delivered"),
        ("seq", 0, "seq"),
    ],
)
def test_bad_fields_are_refused_with_their_name(make_record, field, value, needle):
    with pytest.raises(ValueError, match=needle):
        make_record(0, **{field: value})


def test_an_error_must_be_a_fail(make_record):
    with pytest.raises(ValueError, match="fail safe"):
        make_record(0, decision="PASS", error="camera timeout")
    assert make_record(1, decision="FAIL", error="camera timeout").error == "camera timeout"


def test_from_dict_refuses_unknown_fields(make_record):
    with pytest.raises(ValueError, match="unknown record fields"):
        InspectionRecord.from_dict({**make_record(0).to_dict(), "extra": 1})


def _one_ulp_up(value):
    return math.nextafter(value, math.inf)


#: For every record field but ``mac``: a different value the record still accepts. A field added
#: to InspectionRecord without an entry here fails the test below, so the MAC check keeps up.
_CHANGED_FIELD = {
    "station_id": lambda v: v + "x",
    "part_id": lambda v: v + "x",
    "bundle_sha256": lambda v: "cd" * 32,
    "package_version": lambda v: v + ".post1",
    "decision": lambda v: "PASS",
    "scores": lambda v: {**v, "patchcore": _one_ulp_up(v["patchcore"])},
    "probabilities": lambda v: {**v, "student": _one_ulp_up(v["student"])},
    "fused_probability": _one_ulp_up,
    "threshold": _one_ulp_up,
    "heatmap_sha256": lambda v: "ef" * 32,
    "heatmap_path": lambda v: v + "x",
    "plc_delivered": lambda v: not v,
    "bundle_signed": lambda v: not v,
    "error": lambda v: "camera fault",
    "seq": lambda v: v + 1,
    "record_id": lambda v: v[:-1] + "f",
    "utc_time": lambda v: v.replace(".000001", ".000002"),
    "key_id": lambda v: "k2",
    "prev_mac": lambda v: "1" * 64,
}


def test_the_mac_covers_every_field_of_the_record(make_record):
    """Change any one field of a validly signed record (a float by one ulp) and its MAC no longer
    verifies: no field of the record can be edited unseen."""
    from dataclasses import fields

    unsigned = make_record(
        1,
        heatmap_sha256="ab" * 32,
        heatmap_path="/var/lib/autoweld/maps/0001.png",
        plc_delivered=False,
        bundle_signed=False,
        seq=7,
        record_id="00000000-0000-4000-8000-000000000000",
        utc_time="2026-12-03T10:00:00.000001+00:00",
        key_id="k1",
        prev_mac="2" * 64,
    )
    assert unsigned.decision == "FAIL" and unsigned.error is None  # both may change validly
    signed = InspectionRecord(**{**unsigned.to_dict(), "mac": compute_mac(KEY, unsigned)})
    assert mac_matches(KEY, signed)
    covered = [f.name for f in fields(InspectionRecord) if f.name != "mac"]
    assert sorted(_CHANGED_FIELD) == sorted(covered), "a record field has no changed value here"
    unseen = []
    for name in covered:
        original = getattr(signed, name)
        edited = InspectionRecord(**{**signed.to_dict(), name: _CHANGED_FIELD[name](original)})
        assert getattr(edited, name) != original, name  # the edit really changed the field
        if mac_matches(KEY, edited):
            unseen.append(name)
    assert not unseen, f"the MAC does not cover the field(s) {unseen}"


def test_bundle_signed_is_signed_when_stated_and_absent_from_old_records(make_record):
    """issue 15: whether the bundle was signed is part of what a record signs; a record that does
    not state it (every record written before the field) keeps the canonical form it had."""
    from autoweld.quality.record import canonical_bytes

    legacy = make_record(2, seq=1, key_id="k1", prev_mac="0" * 64)
    assert b"bundle_signed" not in canonical_bytes(legacy)
    unsigned = InspectionRecord(**{**legacy.to_dict(), "bundle_signed": False})
    assert b'"bundle_signed":false' in canonical_bytes(unsigned)
    signed = InspectionRecord(**{**unsigned.to_dict(), "mac": compute_mac(KEY, unsigned)})
    for stated in (None, True):  # dropping or flipping the fact breaks the MAC
        assert not mac_matches(
            KEY, InspectionRecord(**{**signed.to_dict(), "bundle_signed": stated})
        )
    with pytest.raises(ValueError, match="bundle_signed"):
        make_record(bundle_signed="no")


def test_canonical_form_of_a_known_record_never_changes():
    """Known answer: records signed by earlier versions must verify with this one, so the
    canonical bytes (and so the MAC) of a fixed record are pinned here, written out by hand."""
    record = InspectionRecord(
        station_id="cell-7", part_id="VIN-42", bundle_sha256="ab" * 32,
        package_version="0.1.0", decision="FAIL",
        scores={"patchcore": 1.25, "ae": 0.5}, probabilities={"patchcore": 0.75, "ae": 0.125},
        fused_probability=0.625, threshold=0.5, plc_delivered=True, error="engine timeout",
        bundle_signed=False, seq=9, record_id="rec-9", utc_time="2026-12-08T00:00:00.000000Z",
        key_id="k1", prev_mac="cd" * 32,
    )  # fmt: skip
    body = (
        '{"bundle_sha256":"' + "ab" * 32 + '","bundle_signed":false,"decision":"FAIL",'
        '"error":"engine timeout","fused_probability":0.625,"heatmap_path":null,'
        '"heatmap_sha256":null,"key_id":"k1","package_version":"0.1.0","part_id":"VIN-42",'
        '"plc_delivered":true,"prev_mac":"' + "cd" * 32 + '",'
        '"probabilities":{"ae":0.125,"patchcore":0.75},"record_id":"rec-9",'
        '"scores":{"ae":0.5,"patchcore":1.25},"seq":9,"station_id":"cell-7","threshold":0.5,'
        '"utc_time":"2026-12-08T00:00:00.000000Z"}'
    )
    assert canonical_bytes(record) == b"autoweld-ledger-record-v1\n" + body.encode()
    expected = "07000a402bd84ae7645b1cd8c4a32ed87ee9481e5b921bc5889568cab3355e6c"
    assert compute_mac(b"k" * 32, record) == expected
    # to_dict is every field, as given (the ledger stores and exports it)
    assert record.to_dict() == {
        **{name: getattr(record, name) for name in record.__dataclass_fields__},
        "scores": {"patchcore": 1.25, "ae": 0.5},
        "probabilities": {"patchcore": 0.75, "ae": 0.125},
    }
    assert record.to_dict()["scores"] is not record.scores  # a copy the caller may change
