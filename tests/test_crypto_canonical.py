"""Canonical bytes: RFC 8785's own examples, stdlib json as the oracle for sorting and round trips; refusals with
paths; records signed before JCS still verify."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.crypto.algorithms import Algorithm, sign
from governance.crypto.canonical import canonical_bytes, format_timestamp, json_normalize, legacy_canonical_bytes
from governance.crypto.keys import KeyPolicy, TrustStore, b64encode, generate_key
from governance.crypto.record import record_bytes, sign_record, verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signature, Signer, signing_input
from governance.errors import CryptoError, VerificationError

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)  # I-JSON: the integers a JSON number carries exactly
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _same_json(decoded: Any, value: Any) -> bool:
    """Equal as JSON values: numbers are IEEE doubles (JCS writes 5.854892015126691e16 as integer digits)."""
    if isinstance(value, float):
        return isinstance(decoded, int | float) and not isinstance(decoded, bool) and float(decoded) == value
    if isinstance(value, dict):
        return isinstance(decoded, dict) and decoded.keys() == value.keys() and all(
            _same_json(decoded[k], v) for k, v in value.items())
    if isinstance(value, list):
        return isinstance(decoded, list) and len(decoded) == len(value) and all(
            _same_json(d, v) for d, v in zip(decoded, value, strict=True))
    return type(decoded) is type(value) and decoded == value


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _keys_sorted(value: Any) -> bool:
    # RFC 8785 3.2.3: keys sorted by their UTF-16 code units (not code points: they differ past U+FFFF).
    if isinstance(value, dict):
        return list(value) == sorted(value, key=_utf16) and all(_keys_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_sorted(v) for v in value)
    return True


@settings(max_examples=150, deadline=None)
@given(_json)
def test_canonical_bytes_decode_to_the_value_with_sorted_keys(value: Any) -> None:
    encoded = canonical_bytes(value)
    decoded = json.loads(encoded)  # stdlib decoder, independent of orjson
    assert _same_json(decoded, value)
    assert _keys_sorted(json.loads(encoded, object_pairs_hook=lambda pairs: dict(pairs)))
    assert b"\n" not in encoded and b": " not in encoded.replace(b'": "', b"")  # compact
    assert canonical_bytes(decoded) == encoded  # stable across a JSON round trip


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _scalars, min_size=2, max_size=8), st.randoms())
def test_key_insertion_order_does_not_matter(value: dict[str, Any], rnd: random.Random) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_bytes(dict(items)) == canonical_bytes(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_with_their_path(bad: float) -> None:
    with pytest.raises(CryptoError, match=r"\$\.metrics\.auc\[1\]"):
        canonical_bytes({"metrics": {"auc": [0.9, bad]}})


def test_datetimes_are_normalized_to_utc_and_naive_ones_refused() -> None:
    plus_two = datetime(2026, 11, 26, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    utc = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert (
        canonical_bytes({"t": plus_two}) == canonical_bytes({"t": utc}) == b'{"t":"2026-11-26T12:00:00.000000+00:00"}'
    )
    assert format_timestamp(plus_two) == "2026-11-26T12:00:00.000000+00:00"
    with pytest.raises(CryptoError, match="naive datetime"):
        canonical_bytes({"t": datetime(2026, 11, 26, 12, 0)})  # noqa: DTZ001 - the point of the test


@pytest.mark.parametrize(
    ("bad", "where"),
    [({"b": b"raw bytes"}, r"\$\.b: not JSON"), ({1: "int key"}, "keys are strings"),
     ({"big": 2**53 + 1}, r"\$\.big: beyond 2\*\*53"), ({"set": {1, 2}}, r"\$\.set: not JSON")],
)
def test_values_json_cannot_carry_are_refused(bad: dict[Any, Any], where: str) -> None:
    with pytest.raises(CryptoError, match=where):
        canonical_bytes(bad)


def test_json_normalize_matches_a_decoder_and_keeps_number_types() -> None:
    value = {"t": datetime(2026, 1, 2, tzinfo=UTC), "xs": (1, 2.5, 1.0)}
    normalized = json_normalize(value)
    assert normalized == {"t": "2026-01-02T00:00:00.000000+00:00", "xs": [1, 2.5, 1.0]}
    assert isinstance(normalized["xs"][2], float)


def test_rfc_8785_examples() -> None:
    # RFC 8785 section 3.2.2 (numbers, strings and literals) and 3.2.3 (sorting), byte for byte.
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_bytes(value) == expected.encode()
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    order = list(json.loads(canonical_bytes(dict.fromkeys(keys, 0))))
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_jcs_and_the_legacy_form_differ_where_numbers_are_spelled_differently() -> None:
    assert canonical_bytes({"x": 1.0, "y": 1.2345678901234568e17}) == b'{"x":1,"y":123456789012345680}'
    assert legacy_canonical_bytes({"x": 1.0, "y": 1.2345678901234568e17}) == b'{"x":1.0,"y":1.2345678901234568e+17}'


def _legacy_record(payload: dict[str, Any], signer: Signer, secret: bytes, now: datetime) -> dict[str, Any]:
    """A record as shadowgate 0.1 signed it: legacy canonical bytes, no ``canon`` in the block or header."""
    data = signing_input(signer.algorithm, signer.key_id, now, legacy_canonical_bytes(payload), canon=None)
    raw = sign(signer.algorithm, secret, data, Context.EVENT.value.encode())
    block = Signature(alg=signer.algorithm, key_id=signer.key_id, context=Context.EVENT, sig=b64encode(raw),
                      signed_at=now)
    return {"payload": payload, "signature": block.as_json()}


def test_records_signed_before_jcs_still_verify_and_cannot_pass_as_jcs() -> None:
    now = datetime.now(UTC)
    info, secret = generate_key(Algorithm.ML_DSA_65, now - timedelta(days=1), KeyPolicy())
    signer, trust = Signer(info, secret), TrustStore([info])
    payload = {"model": "fraud", "auc": 1.0, "n": 3}
    legacy = _legacy_record(payload, signer, secret.get_secret_value(), now)
    assert "canon" not in legacy["signature"]
    assert verify_record(json.loads(json.dumps(legacy)), Context.EVENT, trust, now, Phase.PQC_ONLY) == payload
    assert record_bytes(legacy) == legacy_canonical_bytes(legacy)
    altered = {**legacy, "payload": {**payload, "n": 4}}
    with pytest.raises(VerificationError):
        verify_record(altered, Context.EVENT, trust, now, Phase.PQC_ONLY)
    claimed = {**legacy, "signature": {**legacy["signature"], "canon": "rfc8785"}}
    with pytest.raises(VerificationError):  # the header binds the canonicalization
        verify_record(claimed, Context.EVENT, trust, now, Phase.PQC_ONLY)
    current = sign_record(payload, Context.EVENT, signer, now)
    assert current["signature"]["canon"] == "rfc8785"
    assert record_bytes(current) == canonical_bytes(current)
    assert verify_record(current, Context.EVENT, trust, now, Phase.PQC_ONLY) == payload
