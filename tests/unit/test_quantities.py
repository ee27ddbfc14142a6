"""Kubernetes quantities: parsing, exact arithmetic, milli-units, formatting, clear errors."""
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtask_operator.core.quantities import (
    QuantityError,
    format_milli,
    format_quantity,
    parse_quantity,
    parse_resource_list,
    to_milli,
)


@pytest.mark.parametrize("text, expected", [
    ("500m", Fraction(1, 2)),
    ("2", Fraction(2)),
    ("1Gi", Fraction(2**30)),
    ("100Ki", Fraction(102400)),
    ("1.5Gi", Fraction(3 * 2**29)),
    ("1e3", Fraction(1000)),
    ("1E-3", Fraction(1, 1000)),
    ("2.5k", Fraction(2500)),
    ("1M", Fraction(10**6)),
    ("128974848", Fraction(128974848)),
    ("129e6", Fraction(129 * 10**6)),
    ("123Mi", Fraction(123 * 2**20)),
    (".5", Fraction(1, 2)),
    ("1.", Fraction(1)),
    ("+3", Fraction(3)),
    ("-1", Fraction(-1)),
    ("250u", Fraction(1, 4000)),
    ("7n", Fraction(7, 10**9)),
    ("1Ei", Fraction(2**60)),
    ("0", Fraction(0)),
])
def test_parse_quantity_strings(text, expected):
    assert parse_quantity(text) == expected


def test_parse_quantity_numbers_are_exact():
    assert parse_quantity(1) == 1
    assert parse_quantity(0.1) == Fraction(1, 10)  # YAML `cpu: 0.1` means one tenth, not its binary neighbour
    assert parse_quantity(0.1) + parse_quantity(0.2) == parse_quantity("300m")


@pytest.mark.parametrize("bad", ["", "1.2.3", "1Gb", "abc", "1 Gi", " 1", "1i", "Gi", "--1", "1e", "1e3Gi",
                                 True, None, [1], {"a": 1}, float("nan"), float("inf"), "1e99"])
def test_bad_quantities_raise_a_clear_error(bad):
    with pytest.raises(QuantityError) as error:
        parse_quantity(bad)
    assert "invalid quantity" in str(error.value)
    assert repr(bad)[:10] in str(error.value)


def test_to_milli_rounds_up_like_kubernetes():
    assert to_milli("500m") == 500
    assert to_milli("1") == 1000
    assert to_milli("1n") == 1  # MilliValue rounds up
    assert to_milli("1Ki") == 1024000
    assert to_milli(2) == 2000


def test_resource_list_names_the_field_and_rejects_negatives():
    assert parse_resource_list({"cpu": "1500m", "nvidia.com/gpu": 1, "example.com/fpga": "2"}) == {
        "cpu": 1500, "nvidia.com/gpu": 1000, "example.com/fpga": 2000}
    with pytest.raises(QuantityError, match=r"spec\.requests\.memory: invalid quantity '1GB'"):
        parse_resource_list({"memory": "1GB"}, "spec.requests")
    with pytest.raises(QuantityError, match=r"requests\.cpu: .*must not be negative"):
        parse_resource_list({"cpu": "-1"}, "requests")
    with pytest.raises(QuantityError, match="expected a mapping"):
        parse_resource_list(["cpu"], "requests")


@pytest.mark.parametrize("milli, resource, text", [
    (500, "cpu", "500m"), (2000, "cpu", "2"), (2**30 * 1000, "memory", "1Gi"),
    (1536 * 2**20 * 1000, "memory", "1536Mi"),
    (1000, "nvidia.com/gpu", "1"), (10**9 * 1000, "memory", "1000000000"), (0, "memory", "0"),
])
def test_format_milli(milli, resource, text):
    assert format_milli(milli, resource) == text
    assert to_milli(text) == milli


@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["cpu", "memory", "example.com/x"]))
def test_format_then_parse_round_trips(milli, resource):
    assert to_milli(format_milli(milli, resource)) == milli


@given(st.lists(st.sampled_from(["100m", "250m", "1", "0.5", "1Gi", "512Mi", "1e3", "3k"]), max_size=20))
def test_milli_sums_match_exact_fraction_sums(values):
    exact = sum((parse_quantity(v) for v in values), Fraction(0))
    assert sum(to_milli(v) for v in values) == exact * 1000
    assert format_quantity(values[0] if values else "0") == format_milli(to_milli(values[0] if values else "0"))
