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
    anything else   -> no messages (the proof checks)
"""

import json
import sys
import time

environments = 0


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
    environments += 1
    position = {"line": 2, "column": 2}
    if "BACKTICK_SORRY" in cmd:
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
