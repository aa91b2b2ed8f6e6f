"""The inert encoding: every builtin value round-trips exactly (types included), nothing else is a
value, and a malformed encoding is refused instead of building anything."""

from __future__ import annotations

import json
import math

import pytest

from workloads.verifiers.inert import NotAValue, decode, encode
from workloads.verifiers.python_sandbox import PythonJob, PythonSandboxPool

VALUES = [
    None, True, False, 0, -1, 10**4000, -(2**521 - 1), 1.5, -0.0, float("inf"), float("-inf"), 5e-324, 1 / 3,
    complex(1.5, -0.0), "", "text", "\u00e9\u4e2d\U0001f600", "\ud800 lone surrogate", b"", b"\x00\xff", bytearray(b"ab"),
    [], [1, [2, [3]]], (), (1,), (1, (2.5, "x")), set(), {1, "a", (2, 3)}, frozenset({frozenset({1}), 2}),
    {}, {"a": 1}, {1: "int key", (1, 2): "tuple key", frozenset({3}): [4], None: True, 2.5: b"x"},
    [{"nested": ({1, 2}, frozenset(), b"y")}],
]


def same(a, b) -> bool:
    """Equal with identical types all the way down, nan equal to nan and -0.0 unequal to 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("value", VALUES + [float("nan")], ids=lambda v: type(v).__name__)
def test_builtin_values_round_trip_exactly_through_json(value):
    wire = json.loads(json.dumps(encode(value)))
    assert same(decode(wire), value)


@pytest.mark.parametrize("value", [
    type("Int", (int,), {})(3), type("Str", (str,), {})("x"), object(), len, lambda: 1, range(3), Ellipsis,
    [type("Same", (), {"__eq__": lambda self, other: True})()], {1: object()},
])
def test_anything_else_is_not_a_value(value):
    with pytest.raises(NotAValue):
        encode(value)


def test_too_deep_is_not_a_value_and_malformed_wire_is_refused():
    deep: list = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(NotAValue, match="deeper"):
        encode(deep)
    for wire in [None, [], ["int"], ["int", "zz"], ["bool", 1], ["str", 5], ["list", 1], ["dict", [[1]]], ["eval", "x"],
                 ["float", 1.5], ["set", [["list", []]]]]:
        with pytest.raises((ValueError, TypeError)):
            decode(wire)


def test_values_cross_the_isolated_judge_exactly(loop):
    """The candidate echoes what the judge sends; the judge checks types and values on return."""
    literal = repr(VALUES).replace("inf", "float('inf')")
    tests = (f"import math\nvalues = {literal}\n"
             "values.append(float('nan'))\n"
             "for value in values:\n"
             "    back = echo(value)\n"
             "    assert type(back) is type(value), (value, back)\n"
             "    assert back == value or (back != back and value != value), (value, back)\n"
             "assert math.copysign(1, echo(-0.0)) == -1\n"
             "assert echo(10**5000) == 10**5000\n")
    pool = PythonSandboxPool(num_workers=1, uid_base=24500)
    try:
        (verdict,) = loop.run_until_complete(pool.verify_batch([PythonJob("def echo(x):\n    return x", tests)]))
    finally:
        loop.run_until_complete(pool.close())
    assert verdict.status == "passed", verdict
