"""Per-request options: zero means the server default, anything out of range is INVALID_ARGUMENT
with a message that names the field."""

from __future__ import annotations

import math

import pytest
from facedet_server.errors import Code, InvalidOptions
from facedet_server.faces.options import Options, resolve_options

DEFAULTS = Options(min_confidence=0.4, iou_threshold=0.45, max_faces=200, min_face_size=12.0)


def test_all_zero_gives_the_defaults() -> None:
    assert resolve_options(DEFAULTS) == DEFAULTS
    assert (
        resolve_options(DEFAULTS, min_confidence=0.0, iou_threshold=0.0, max_faces=0, min_face_size=0.0)
        == DEFAULTS
    )


def test_options_defaults_match_the_documented_server_defaults() -> None:
    assert Options() == Options(min_confidence=0.5, iou_threshold=0.5, max_faces=1000, min_face_size=0.0)


def test_given_values_win_over_defaults() -> None:
    got = resolve_options(DEFAULTS, min_confidence=0.9, iou_threshold=0.3, max_faces=7, min_face_size=40.5)
    assert got == Options(min_confidence=0.9, iou_threshold=0.3, max_faces=7, min_face_size=40.5)
    # Each field on its own; the others stay at their defaults.
    assert resolve_options(DEFAULTS, min_confidence=0.6) == Options(0.6, 0.45, 200, 12.0)
    assert resolve_options(DEFAULTS, iou_threshold=0.7) == Options(0.4, 0.7, 200, 12.0)
    assert resolve_options(DEFAULTS, max_faces=3) == Options(0.4, 0.45, 3, 12.0)
    assert resolve_options(DEFAULTS, min_face_size=1.5) == Options(0.4, 0.45, 200, 1.5)


@pytest.mark.parametrize("value", [1.0, 1e-6, 0.5])
def test_unit_interval_edges_accepted(value: float) -> None:
    got = resolve_options(DEFAULTS, min_confidence=value, iou_threshold=value)
    assert (got.min_confidence, got.iou_threshold) == (value, value)


def test_max_faces_limit_is_inclusive_and_caps_the_default() -> None:
    assert resolve_options(DEFAULTS, max_faces=50, max_faces_limit=50).max_faces == 50
    # A default above the server limit is cut down to it.
    assert resolve_options(DEFAULTS, max_faces_limit=20).max_faces == 20
    assert resolve_options(DEFAULTS, max_faces_limit=1000).max_faces == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_confidence", math.nan),
        ("min_confidence", -0.1),
        ("min_confidence", 1.0001),
        ("min_confidence", math.inf),
        ("min_confidence", -math.inf),
        ("iou_threshold", math.nan),
        ("iou_threshold", -1e-9),
        ("iou_threshold", 2.0),
        ("iou_threshold", math.inf),
        ("min_face_size", math.nan),
        ("min_face_size", -1.0),
        ("min_face_size", math.inf),
        ("max_faces", -1),
        ("max_faces", 1001),
        ("max_faces", 10**9),
    ],
)
def test_bad_values_are_rejected_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidOptions) as info:
        resolve_options(DEFAULTS, **{field: value})  # type: ignore[arg-type]
    assert info.value.code is Code.INVALID_ARGUMENT
    assert f"options.{field}" in info.value.message
    assert str(value) in info.value.message  # the offending value is echoed back
    # The other fields are not blamed.
    others = {"min_confidence", "iou_threshold", "min_face_size", "max_faces"} - {field}
    assert not any(f"options.{other}" in info.value.message for other in others)


def test_max_faces_message_gives_the_limit() -> None:
    with pytest.raises(InvalidOptions, match="between 0 and 25, got 26"):
        resolve_options(DEFAULTS, max_faces=26, max_faces_limit=25)


def test_first_bad_field_is_reported_even_when_others_are_fine() -> None:
    with pytest.raises(InvalidOptions, match=r"options\.iou_threshold"):
        resolve_options(DEFAULTS, min_confidence=0.7, iou_threshold=1.5, max_faces=10, min_face_size=3)
