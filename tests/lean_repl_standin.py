"""PROTOCOL STAND-IN for the Lean REPL: NOT Lean. It speaks the REPL's JSON framing only.

No Lean toolchain can be installed on the machines that run this project's CI, so the pool,
parser, timeout and crash handling are tested against this process. It reads requests
separated by blank lines and answers like `lake env repl` does, with behaviour chosen by
markers in the command text:

    import ...      -> a new environment (the header)
    SORRY           -> a `sorries` entry and a "declaration uses 'sorry'" warning
    BACKTICK_SORRY  -> only the warning, quoted with backticks
    ERROR           -> an error message at line 2
    HANG            -> never answers (a timeout)
    CRASH           -> exits (EOF)
    GARBAGE         -> prints non-JSON
    WRITE_PROJECT   -> tries to create a file in its working directory (the Lake project) and
                       says in an info message whether it could
    anything else   -> no messages (the proof checks)

It also remembers `theorem NAME <signature> :=` declarations, and answers the pool's two
follow-up commands as Lean would: `example : ∀ <binders>, <type> := @NAME` elaborates only when
that is NAME's signature (else a type mismatch error), and `#print axioms NAME` lists
`propext`, or `sorryAx` when the proof text contained HIDDEN_AXIOM, or `Lean.ofReduceBool` for
NATIVE.
"""

import json
import re
import sys
import time

environments = 0
# per environment, as Lean's are: name -> (normalised signature, proof text)
declarations: dict[int, dict[str, tuple[str, str]]] = {}


def normalise(text: str) -> str:
    return " ".join(text.split())


def signature_of_example(text: str) -> str:
    """`∀ (a b : Nat), a + b = b + a` -> `(a b : Nat) : a + b = b + a`: the binders end at the
    first comma outside brackets."""
    if not text.startswith("∀ "):
        return ": " + text
    depth = 0
    for index, char in enumerate(text[2:], start=2):
        if char in "([{⦃":
            depth += 1
        elif char in ")]}⦄":
            depth -= 1
        elif char == "," and depth == 0:
            return text[2:index].strip() + " : " + text[index + 1 :].strip()
    return text


def respond(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n\n")  # the REPL pretty-prints too
    sys.stdout.flush()


def handle(request: dict) -> None:
    global environments
    cmd = request.get("cmd", "")
    if "env" in request and not 0 <= request["env"] < environments:
        respond({"message": "Unknown environment."})
        return
    if "HANG" in cmd:
        time.sleep(3600)
    if "CRASH" in cmd:
        sys.exit(3)
    if "GARBAGE" in cmd:
        sys.stdout.write("this is not json\n\n")
        sys.stdout.flush()
        return
    response = {"env": environments}
    declared = declarations[environments] = dict(declarations.get(request.get("env"), {}))
    environments += 1
    position = {"line": 2, "column": 2}
    example = re.match(r"example : (.*) := @(\S+)$", cmd, re.S)
    axioms = re.match(r"#print axioms (\S+)$", cmd)
    code = re.sub(r"--[^\n]*", "", re.sub(r"/-.*?-/", "", cmd, flags=re.S))  # Lean does not read comments
    for name, signature in re.findall(r"(?:theorem|lemma)\s+(\S+)\s+(.*?)\s*:=", code, re.S):
        declared[name] = (normalise(signature), cmd)
    if example:
        expected, name = normalise(signature_of_example(example.group(1))), example.group(2)
        if name not in declared:
            response["messages"] = [{"severity": "error", "pos": position, "data": f"unknown identifier '{name}'"}]
        elif normalise(declared[name][0]).removeprefix(": ") != expected.removeprefix(": "):
            response["messages"] = [{"severity": "error", "pos": position, "data": "type mismatch"}]
    elif axioms:
        name = axioms.group(1)
        proof = declared.get(name, ("", ""))[1]
        used = "sorryAx" if "HIDDEN_AXIOM" in proof else "Lean.ofReduceBool" if "NATIVE" in proof else "propext"
        response["messages"] = [{"severity": "info", "pos": position, "data": f"'{name}' depends on axioms: [{used}]"}]
    elif "WRITE_PROJECT" in cmd:
        try:
            with open("standin-wrote-here", "w") as written:
                written.write("a proof changed the project")
            outcome = "wrote the project"
        except OSError as exc:
            outcome = f"could not write the project: {exc.strerror}"
        response["messages"] = [{"severity": "info", "pos": position, "data": outcome}]
    elif "BACKTICK_SORRY" in cmd:
        response["messages"] = [{"severity": "warning", "pos": {"line": 1, "column": 8}, "endPos": {"line": 1, "column": 12},
                                 "data": "declaration uses `sorry`"}]
    elif "SORRY" in cmd:
        response["sorries"] = [{"pos": position, "endPos": {"line": 2, "column": 7}, "goal": "⊢ True"}]
        response["messages"] = [{"severity": "warning", "pos": {"line": 1, "column": 8}, "endPos": {"line": 1, "column": 12},
                                 "data": "declaration uses 'sorry'"}]
    elif "ERROR" in cmd:
        response["messages"] = [{"severity": "error", "pos": position, "endPos": {"line": 2, "column": 9},
                                 "data": "unsolved goals\n⊢ 1 + 1 = 3"}]
    respond(response)


def main() -> None:
    buffer = []
    for line in sys.stdin:
        if line.strip():
            buffer.append(line)
            continue
        if buffer:
            handle(json.loads("".join(buffer)))
            buffer = []


if __name__ == "__main__":
    main()
