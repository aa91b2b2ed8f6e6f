"""The Lean verifier's parser, pool, timeouts and crash handling, driven against
`lean_repl_standin.py`: a PROTOCOL STAND-IN that speaks the REPL's JSON, not Lean. The
end-to-end tests at the bottom run only where a real Lean toolchain is configured."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from workloads.verifiers.lean import (
    LeanConfig, LeanReplPool, LeanToolchainNotFound, judge, screen, split_header,
)

STANDIN = [sys.executable, str(Path(__file__).with_name("lean_repl_standin.py"))]
HEADER = "import Mathlib"


def pool_with_standin(**config) -> LeanReplPool:
    config = {"repls_per_header": 1, "timeout_s": 2.0, "sandbox": False, **config}
    return LeanReplPool(LeanConfig(**config), command=STANDIN)


def run(coro):
    return asyncio.run(coro)


def test_toolchain_not_found_says_how_to_configure_it():
    with pytest.raises(LeanToolchainNotFound, match=r"Lean toolchain not found: `no-such-lake` is not on PATH.*lake build repl"):
        LeanReplPool(LeanConfig(command=("no-such-lake", "env", "repl")))


def test_judge_requires_no_error_no_sorry_and_no_sorry_warning():
    assert judge({"env": 1}).status == "passed"
    assert judge({"env": 1, "messages": [{"severity": "info", "data": "ok"}]}).status == "passed"
    assert judge({"env": 1, "messages": [{"severity": "error", "data": "type mismatch"}]}).status == "failed"
    assert judge({"env": 1, "sorries": [{"goal": "⊢ True"}]}).status == "failed"
    for quote in ("'sorry'", "`sorry`"):
        warning = {"severity": "warning", "data": f"declaration uses {quote}"}
        assert judge({"env": 1, "messages": [warning]}).status == "failed"
    assert judge({"message": "Unknown environment."}).status == "crashed"
    shifted = judge({"env": 1, "messages": [{"severity": "error", "pos": {"line": 2, "column": 0}, "data": "x"}]}, line_offset=3)
    assert shifted.messages[0]["pos"] == {"line": 5, "column": 0}


@pytest.mark.parametrize("proof, reason", [
    ("axiom cheat : False\ntheorem t : 1 = 2 := cheat.elim", "axiom"),
    ("theorem t : True := trivial\n#exit", "#exit"),
    ("set_option debug.skipKernelTC true in\ntheorem t : True := trivial", "kernel"),
    ("import Mathlib.Tactic\ntheorem t : True := trivial", "imports"),
    ("theorem t : 1 = 1 := sorryAx _ false", "sorryAx"),
])
def test_banned_commands_are_rejected_before_lean(proof, reason):
    assert reason in screen(proof)


def test_a_changed_statement_is_rejected():
    statement = "theorem add_comm' (a b : Nat) : a + b = b + a"
    assert screen(statement + " := Nat.add_comm a b", statement) is None
    assert "statement was changed" in screen("theorem add_comm' (a b : Nat) : a + b = a + b := rfl", statement)


def test_split_header_counts_import_lines():
    header, body, lines = split_header("import Mathlib\nimport Aesop\n\ntheorem t : True := trivial")
    assert header == "import Mathlib\nimport Aesop\n" and body.startswith("theorem") and lines == 3


def test_pool_checks_proofs_against_the_elaborated_header():
    async def scenario():
        pool = pool_with_standin()
        try:
            ok = await pool.check(HEADER, "theorem t : True := trivial")
            bad = await pool.check(HEADER, "theorem t : 1 = 3 := by ERROR")
            sorry = await pool.check(HEADER, "theorem t : True := by SORRY")
            backtick = await pool.check(HEADER, "theorem t : True := by BACKTICK_SORRY")
            rejected = await pool.check(HEADER, "axiom bad : False")
            whole_file = await pool.check_file("import Mathlib\n\ntheorem t : 1 = 3 := by\n  ERROR")
            return ok, bad, sorry, backtick, rejected, whole_file, dict(pool.stats)
        finally:
            await pool.close()

    ok, bad, sorry, backtick, rejected, whole_file, stats = run(scenario())
    assert ok.status == "passed"
    assert bad.status == "failed" and "unsolved goals" in bad.message and bad.messages[0]["pos"]["line"] == 2
    assert sorry.status == "failed" and sorry.sorries
    assert backtick.status == "failed" and not backtick.sorries
    assert rejected.status == "rejected"
    assert whole_file.status == "failed" and whole_file.messages[0]["pos"]["line"] == 4  # 2 + 2 header lines
    assert stats["crashes"] == 0 and stats["checks"] == 5  # the rejected proof never reached Lean


@pytest.mark.parametrize("marker, status", [("HANG", "timeout"), ("CRASH", "crashed"), ("GARBAGE", "crashed")])
def test_timeouts_and_crashes_swap_in_the_hot_spare(marker, status):
    async def scenario():
        pool = pool_with_standin()
        try:
            await pool.check(HEADER, "theorem warm : True := trivial")
            started_before = pool.stats["repls_started"]
            broken = await pool.check(HEADER, f"theorem t : True := by {marker}")
            after = await pool.check(HEADER, "theorem t : True := trivial")
            return broken, after, pool.stats["repls_started"] - started_before
        finally:
            await pool.close()

    broken, after, new_repls = run(scenario())
    assert broken.status == status
    assert after.status == "passed"
    assert new_repls == 1  # the spare took over; one new spare was started behind it


def test_repls_run_sandboxed_and_still_recover_from_hangs():
    async def scenario():
        pool = pool_with_standin(sandbox=True)
        try:
            hung = await pool.check(HEADER, "theorem t : True := by HANG")
            ok = await pool.check(HEADER, "theorem t : True := trivial")
            return pool.command, hung, ok
        finally:
            await pool.close()

    command, hung, ok = run(scenario())
    assert command[0] == "bwrap" and "--unshare-net" in command
    assert hung.status == "timeout" and ok.status == "passed"


def test_repls_are_recycled_by_memory():
    async def scenario():
        pool = pool_with_standin(max_rss_mb=1)  # every REPL is "too big": recycle after each proof
        try:
            verdicts = [await pool.check(HEADER, f"theorem t{i} : True := trivial") for i in range(3)]
            return verdicts, dict(pool.stats)
        finally:
            await pool.close()

    verdicts, stats = run(scenario())
    assert all(v.passed for v in verdicts) and stats["recycled"] == 3


REAL_PROJECT = os.environ.get("RAYWORKS_LEAN_PROJECT")
needs_lean = pytest.mark.skipif(not (REAL_PROJECT and shutil.which("lake")),
                                reason="no Lean toolchain: set RAYWORKS_LEAN_PROJECT to a Lake project with the REPL built")


@needs_lean
def test_real_lean_accepts_a_proof_and_rejects_sorry():
    async def scenario():
        pool = LeanReplPool(LeanConfig(project_dir=REAL_PROJECT, repls_per_header=1, timeout_s=120))
        try:
            good = await pool.check("", "theorem two : 1 + 1 = 2 := rfl")
            sorry = await pool.check("", "theorem two' : 1 + 1 = 2 := by sorry")
            wrong = await pool.check("", "theorem three : 1 + 1 = 3 := rfl")
            return good, sorry, wrong
        finally:
            await pool.close()

    good, sorry, wrong = run(scenario())
    assert good.status == "passed" and sorry.status == "failed" and wrong.status == "failed"


@needs_lean
def test_real_lean_timeout_recovers():
    async def scenario():
        pool = LeanReplPool(LeanConfig(project_dir=REAL_PROJECT, repls_per_header=1, timeout_s=2))
        try:
            slow = await pool.check("", "theorem slow : (List.range 100000000).length = 100000000 := by decide")
            fine = await pool.check("", "theorem fine : True := trivial", timeout_s=120)
            return slow, fine
        finally:
            await pool.close()

    slow, fine = run(scenario())
    assert slow.status == "timeout" and fine.status == "passed"
