"""Kubernetes resource quantities ("500m", "1Gi", "2", 1, "1e3") with exact arithmetic (pure).

`parse_quantity` returns an exact `Fraction`. The scheduler works in integer milli-units (`to_milli`, rounded up as
Kubernetes' MilliValue does), which keeps sums and comparisons exact and fast.
"""
from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIXES = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
}
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<exponent>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?))"
)
# Resources whose quantities read best with binary suffixes when they divide evenly.
_BYTE_RESOURCES = ("memory", "ephemeral-storage", "storage")
MAX_MILLI = 2**62  # integer milli-units are capped here (about 4.6 PB or 4.6e15 cores): far beyond any node
MAX_QUANTITY_LENGTH = 100  # characters of a quantity string (the CRD pattern admits at most 67); 5000 digits: refused


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity; the message says which value and why."""


def parse_quantity(value: object) -> Fraction:
    """The exact value of a Kubernetes quantity: a string such as "500m", "1Gi", "1e3", or an int / float."""
    if isinstance(value, bool):
        raise QuantityError(f"invalid quantity {value!r}: expected a number or a string such as '500m' or '1Gi'")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"invalid quantity {value!r}: must be finite")
        return Fraction(repr(value))  # YAML `cpu: 0.5` means the decimal 0.5, not its binary neighbour
    if isinstance(value, Fraction):
        return value
    if not isinstance(value, str):
        raise QuantityError(
            f"invalid quantity {value!r}: expected a number or a string such as '500m' or '1Gi', "
            f"got {type(value).__name__}")
    return _parse_string(value)


@functools.lru_cache(maxsize=4096)
def _parse_string(text: str) -> Fraction:
    if len(text) > MAX_QUANTITY_LENGTH:
        raise QuantityError(f"invalid quantity {text[:20]!r}... ({len(text)} characters): at most "
                            f"{MAX_QUANTITY_LENGTH} characters")
    match = _QUANTITY.fullmatch(text.strip()) if text.strip() == text else None
    if match is None:
        raise QuantityError(
            f"invalid quantity {text!r}: expected a number with an optional suffix "
            f"(m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent (1e3)")
    number = Fraction(match["number"])
    if match["exponent"] is not None:
        exponent = int(match["exponent"][1:])
        if abs(exponent) > 30:
            raise QuantityError(f"invalid quantity {text!r}: exponent out of range")
        number *= Fraction(10) ** exponent
    elif match["suffix"] in _BINARY_SUFFIXES:
        number *= _BINARY_SUFFIXES[match["suffix"]]
    else:
        number *= _DECIMAL_SUFFIXES[match["suffix"]]
    return -number if match["sign"] == "-" else number


def to_milli(value: object) -> int:
    """A quantity in integer milli-units, rounded up (as Kubernetes' MilliValue), capped at MAX_MILLI."""
    if isinstance(value, str):
        return _milli_of_string(value)
    exact = parse_quantity(value) * 1000
    return min(math.ceil(exact), MAX_MILLI)


@functools.lru_cache(maxsize=4096)
def _milli_of_string(text: str) -> int:
    return min(math.ceil(_parse_string(text) * 1000), MAX_MILLI)


def parse_resource_list(resources: object, where: str = "resources") -> dict[str, int]:
    """A Kubernetes ResourceList ({"cpu": "500m", "nvidia.com/gpu": 1}) as non-negative milli-units per name."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise QuantityError(f"{where}: expected a mapping of resource name to quantity, got {type(resources).__name__}")
    parsed = {}
    for name, value in resources.items():
        try:
            milli = to_milli(value)
        except QuantityError as error:
            raise QuantityError(f"{where}.{name}: {error}") from None
        if milli < 0:
            raise QuantityError(f"{where}.{name}: invalid quantity {value!r}: must not be negative")
        parsed[str(name)] = milli
    return parsed


def format_milli(milli: int, resource: str = "") -> str:
    """A milli-unit amount written as Kubernetes would: "500m", "2", "1Gi", "1500Mi"."""
    if milli % 1000:
        return f"{milli}m"
    units = milli // 1000
    if units and (resource in _BYTE_RESOURCES or resource.startswith("hugepages-")):
        for suffix, factor in reversed(_BINARY_SUFFIXES.items()):
            if units % factor == 0:
                return f"{units // factor}{suffix}"
    return str(units)


def format_quantity(value: object, resource: str = "") -> str:
    """Any quantity in its canonical short form (see `format_milli`)."""
    return format_milli(to_milli(value), resource)
