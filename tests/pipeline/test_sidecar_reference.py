"""The sidecar fields users rely on stay as they were before the one-plan redesign (issue 17): every
field of the saved sidecars (t2v, Lightning, i2v of the trained default; see sidecar_reference.py) is
still there with the same value. New fields may be added."""

import json

import pytest

from tests.pipeline.sidecar_reference import CASES, REFERENCE, sidecars


@pytest.fixture(scope="module")
def now():
    return sidecars()


@pytest.mark.parametrize("case", list(CASES))
def test_sidecar_fields_are_unchanged(case, now):
    saved = json.loads(REFERENCE.read_text())[case]
    assert "request" in saved and "height_width" in saved  # the reference holds real sidecars
    changed = {k: (v, now[case].get(k, "<missing>")) for k, v in saved.items() if now[case].get(k, "<missing>") != v}
    assert not changed, changed
