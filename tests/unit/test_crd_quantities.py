"""Issue 12: the CRD bounds the quantities of spec.devices.resources, so that a request no scheduler can read
(`cpu: "-1"`, 5000 digits) is refused by the API server itself, and the Python model (the local runtime) agrees."""
from __future__ import annotations

import re

import pytest

from fedtask_operator.core.quantities import parse_quantity
from fedtask_operator.core.spec import QUANTITY_PATTERN
from tests.support.crd import SPEC_SCHEMA, api_server_errors, paths, python_errors

REQUESTS = "spec.devices.resources.requests.cpu"
LIMITS = "spec.devices.resources.limits.memory"


def devices(requests=None, limits=None):
    return {"devices": {"resources": {"requests": requests or {}, "limits": limits or {}}}}


def test_the_committed_crd_carries_the_bounded_pattern():
    resources = SPEC_SCHEMA["properties"]["devices"]["properties"]["resources"]["properties"]
    for name in ("requests", "limits"):
        assert resources[name]["additionalProperties"]["pattern"] == QUANTITY_PATTERN


@pytest.mark.parametrize("spec, expected", [
    (devices({"cpu": "-1"}), {REQUESTS}),
    (devices({"cpu": "-500m"}), {REQUESTS}),
    (devices({"cpu": "1" * 5000}), {REQUESTS}),
    (devices({"cpu": "0." + "1" * 31}), {REQUESTS}),
    (devices({"cpu": "1e1234"}), {REQUESTS}),
    (devices(limits={"memory": "-1Gi"}), {LIMITS}),
    (devices(limits={"memory": "9" * 31 + "Gi"}), {LIMITS}),
    (devices({"cpu": -1}), {REQUESTS}),  # a JSON integer skips the pattern: minimum 0 and a maximum bound it
    (devices(limits={"memory": 10 ** 19}), {LIMITS}),
])
def test_unreadable_quantities_are_refused_by_both(spec, expected):
    assert paths(api_server_errors(spec)) == expected
    assert paths(python_errors(spec)) == expected


@pytest.mark.parametrize("value", ["1", "500m", "2Gi", "+1", "1.5", ".5", "1e3", "1E-3", "0", "9" * 30 + "Ei",
                                   "1" * 30 + "." + "1" * 30 + "e+999"])
def test_ordinary_quantities_still_pass(value):
    spec = devices({"cpu": value}, {"memory": value})
    assert api_server_errors(spec) == [] and python_errors(spec) == []


@pytest.mark.parametrize("value", [0, 2, 10 ** 18])
def test_ordinary_integer_quantities_still_pass(value):
    spec = devices({"cpu": value}, {"memory": value})
    assert api_server_errors(spec) == [] and python_errors(spec) == []


def test_what_the_pattern_admits_is_short_enough_for_the_parser():
    """The longest admitted string has 67 characters: the parser's length bound (100) never refuses a valid one; its
    exponent bound (30) can, and then the scheduler rejects that task alone (test_scheduling)."""
    longest = "+" + "9" * 30 + "." + "9" * 30 + "e+999"
    assert re.search(QUANTITY_PATTERN, longest) and len(longest) == 67
    assert parse_quantity("+" + "9" * 30 + "." + "9" * 30 + "Ei") > 0
