"""An inert, tagged encoding of builtin Python values. Standard library only.

The isolated judge (zygote.py) and the pool use it to move arguments, results and variable
snapshots between a candidate's sandboxed process and the trusted process that judges it.
Decoding only ever builds builtin values, so nothing the candidate sends can run code or
compare equal to everything on the judge's side.

Every value is a JSON list whose first item is a tag:

    ["none"]  ["bool", b]  ["int", hex]  ["float", float.hex()]  ["complex", re, im]
    ["str", s]  ["bytes", hex]  ["bytearray", hex]
    ["list", [...]]  ["tuple", [...]]  ["set", [...]]  ["frozenset", [...]]  ["dict", [[k, v], ...]]

Types are checked exactly (`type(x) is int`), so a subclass of a builtin with its own
`__eq__` is not a value. Ints travel as hex (no limit on digits); floats as `float.hex`, which
round-trips every float exactly, nan, inf and -0.0 included. Plain json was not enough: it
cannot tell a tuple from a list, has no sets, bytes or non-string keys, and drops nan.
"""

MAX_DEPTH = 200


class NotAValue(TypeError):
    """The object is not a builtin value (a class instance, a function, a subclass, too deep)."""


SCALARS = {
    type(None): lambda x: ["none"],
    bool: lambda x: ["bool", x],
    int: lambda x: ["int", format(x, "x")],
    float: lambda x: ["float", x.hex()],
    complex: lambda x: ["complex", x.real.hex(), x.imag.hex()],
    str: lambda x: ["str", x],
    bytes: lambda x: ["bytes", x.hex()],
    bytearray: lambda x: ["bytearray", bytes(x).hex()],
}
SEQUENCES = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}


def encode(value, depth=0):
    """The tagged form of `value`, or NotAValue naming the type that is not a builtin value."""
    if depth > MAX_DEPTH:
        raise NotAValue(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind in SCALARS:
        return SCALARS[kind](value)
    if kind in SEQUENCES:
        return [SEQUENCES[kind], [encode(item, depth + 1) for item in value]]
    if kind is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise NotAValue(f"a {kind.__module__}.{kind.__qualname__} object is not a builtin value")


def _int(text):
    if not isinstance(text, str) or not text.lstrip("-").isalnum():
        raise ValueError("bad int")
    return int(text, 16)


def _float(text):
    if not isinstance(text, str):
        raise ValueError("bad float")
    return float.fromhex(text)


DECODERS = {
    "none": (0, lambda: None),
    "bool": (1, lambda b: b if type(b) is bool else _bad("bool")),
    "int": (1, _int),
    "float": (1, _float),
    "complex": (2, lambda re, im: complex(_float(re), _float(im))),
    "str": (1, lambda s: s if type(s) is str else _bad("str")),
    "bytes": (1, lambda h: bytes.fromhex(h)),
    "bytearray": (1, lambda h: bytearray.fromhex(h)),
}
CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def _bad(what):
    raise ValueError(f"malformed {what}")


def decode(data, depth=0):
    """The value of a tagged form; ValueError for anything that is not one."""
    if depth > MAX_DEPTH + 1:
        raise ValueError("nested too deeply")
    if type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError(f"not a tagged value: {str(data)[:80]}")
    tag, fields = data[0], data[1:]
    if tag in DECODERS:
        arity, build = DECODERS[tag]
        if len(fields) != arity:
            raise ValueError(f"{tag}: expected {arity} field(s)")
        return build(*fields)
    if len(fields) != 1 or type(fields[0]) is not list:
        raise ValueError(f"{tag}: expected one list")
    if tag in CONTAINERS:
        return CONTAINERS[tag](decode(item, depth + 1) for item in fields[0])
    if tag == "dict":
        pairs = fields[0]
        if any(type(pair) is not list or len(pair) != 2 for pair in pairs):
            raise ValueError("dict: expected [key, value] pairs")
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
    raise ValueError(f"unknown tag {tag!r}")
