"""The Lean verifier's parser, pool, timeouts and crash handling, driven against
`lean_repl_standin.py`: a PROTOCOL STAND-IN that speaks the REPL's JSON, not Lean. The
end-to-end tests at the bottom run only where a real Lean toolchain is configured."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from workloads.verifiers.lean import (
    LeanConfig, LeanReplPool, LeanToolchainNotFound, judge, screen, split_header, split_statement, statement_check,
)
from workloads.verifiers.python_sandbox import IsolationUnavailable

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
    ("#eval IO.FS.writeFile \"x\" \"y\"\ntheorem t : True := trivial", "#eval"),
    ("theorem t : True := trivial\n#eval! (IO.println 1)", "#eval"),
    ("run_cmd Lean.logInfo \"x\"\ntheorem t : True := trivial", "meta code"),
    ("local macro \"cheat\" : tactic => `(tactic| sorry)\ntheorem t : False := by cheat", "syntax"),
    ("@[simp] scoped elab \"x\" : term => pure default", "syntax"),
    ("initialize counter : IO.Ref Nat ← IO.mkRef 0", "initialisers"),
    ("private axiom cheat : False", "axiom"),
])
def test_banned_commands_are_rejected_before_lean(proof, reason):
    assert reason in screen(proof)


def test_a_changed_statement_is_rejected_by_the_pre_screen():
    statement = "theorem add_comm' (a b : Nat) : a + b = b + a"
    assert screen(statement + " := Nat.add_comm a b", statement) is None
    assert "statement was changed" in screen("theorem add_comm' (a b : Nat) : a + b = a + b := rfl", statement)


def test_the_statement_check_is_a_lean_command_built_from_the_statement():
    assert split_statement("theorem foo {α : Type} [inst : Inhabited α] (x : α) : x = x := by rfl") == (
        "foo", "{α : Type} [inst : Inhabited α] (x : α)", "x = x")
    assert statement_check("theorem add_comm' (a b : Nat) : a + b = b + a") == (
        "add_comm'", "example : ∀ (a b : Nat), a + b = b + a := @add_comm'")
    assert statement_check("lemma t : (fun x : Nat => x) 1 = 1") == ("t", "example : (fun x : Nat => x) 1 = 1 := @t")
    with pytest.raises(ValueError, match="statement"):
        split_statement("example : True")


STATEMENT = "theorem add_comm' (a b : Nat) : a + b = b + a"


def test_lean_decides_the_statement_and_the_axioms():
    async def scenario():
        pool = pool_with_standin()
        try:
            return [await pool.check(HEADER, proof, STATEMENT) for proof in (
                STATEMENT + " := Nat.add_comm a b",
                # the original statement inside a comment passes the text filter; Lean refuses the theorem
                f"/- {STATEMENT} -/\ntheorem add_comm' (a b : Nat) : a + b = a + b := rfl",
                f"-- {STATEMENT}\ntheorem other (a b : Nat) : a + b = b + a := Nat.add_comm a b",
                STATEMENT + " := by HIDDEN_AXIOM exact Nat.add_comm a b",
                STATEMENT + " := by NATIVE decide",
            )]
        finally:
            await pool.close()

    good, changed, renamed, sorry_axiom, native = run(scenario())
    assert good.status == "passed"
    assert changed.status == "failed" and "does not prove the expected statement" in changed.message
    assert renamed.status == "failed" and "unknown identifier" in renamed.message
    assert sorry_axiom.status == "failed" and "sorryAx" in sorry_axiom.message
    assert native.status == "failed" and "Lean.ofReduceBool" in native.message


def test_the_pool_refuses_to_start_without_bubblewrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IsolationUnavailable, match=r"bubblewrap \(bwrap\) is not installed.*sandbox=False"):
        LeanReplPool(LeanConfig(repls_per_header=1), command=STANDIN)


def test_sandboxed_repl_from_a_virtualenv_under_tmp_cannot_change_the_project(tmp_path):
    """An interpreter in a virtualenv under /tmp (hidden by the private /tmp unless bound back),
    a project it may read but not change."""
    venv = Path(tempfile.mkdtemp(prefix="rayworks-venv-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        project = tmp_path / "project"
        project.mkdir()
        (project / "lakefile.lean").write_text("-- the project\n")
        command = [str(venv / "bin" / "python"), str(Path(__file__).with_name("lean_repl_standin.py"))]

        async def scenario():
            pool = LeanReplPool(LeanConfig(project_dir=str(project), repls_per_header=1, timeout_s=10), command=command)
            try:
                return (await pool.check(HEADER, "theorem t : True := trivial"),
                        await pool.check(HEADER, "theorem t : True := by WRITE_PROJECT"))
            finally:
                await pool.close()

        ok, write = run(scenario())
        assert ok.status == "passed", ok
        assert write.status == "passed" and "project" in write.messages[0]["data"]
        assert sorted(p.name for p in project.iterdir()) == ["lakefile.lean"]  # nothing reached the host's project
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def standin_children() -> list[int]:
    """Stand-in REPLs started by this process (unsandboxed pools: direct children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"lean_repl_standin" in (entry / "cmdline").read_bytes():
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if ppid == os.getpid() and state != "Z":
                    found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_header_pools_are_bounded_and_a_header_timeout_kills_its_repl():
    async def scenario():
        pool = pool_with_standin(max_headers=2, header_timeout_s=1.0)
        try:
            verdicts = [await pool.check(f"import Header{i}", "theorem t : True := trivial") for i in range(4)]
            await asyncio.sleep(0.2)
            live_after_lru = len(standin_children())
            hung_header = await pool.check("import HANG", "theorem t : True := trivial")
            live_after_hang = len(standin_children())
            return verdicts, live_after_lru, hung_header, live_after_hang, dict(pool.stats)
        finally:
            await pool.close()

    verdicts, live_after_lru, hung_header, live_after_hang, stats = run(scenario())
    assert [v.status for v in verdicts] == ["passed"] * 4
    assert stats["evicted_headers"] == 3 and live_after_lru == 2  # two for Header2/3, one for HANG
    assert hung_header.status == "crashed" and "did not elaborate within 1.0 s" in hung_header.message
    assert live_after_hang == 1  # the hung REPL was killed (and "import Header2" was evicted for it)
    assert standin_children() == []


def test_a_replacement_that_fails_never_goes_back_to_the_queue():
    async def scenario():
        pool = pool_with_standin()
        try:
            first = await pool.check(HEADER, "theorem t : True := trivial")
            working = pool.command
            pool.command = [sys.executable, "-c", "raise SystemExit(1)"]  # replacements cannot start now
            crashed = await pool.check(HEADER, "theorem t : True := by CRASH")
            no_repl = await asyncio.wait_for(pool.check(HEADER, "theorem t : True := trivial"), timeout=30)
            pool.command = working
            recovered = await asyncio.wait_for(pool.check(HEADER, "theorem t : True := trivial"), timeout=30)
            return first, crashed, no_repl, recovered
        finally:
            await pool.close()

    first, crashed, no_repl, recovered = run(scenario())
    assert first.passed and crashed.status == "crashed"
    assert no_repl.status == "crashed" and "no REPL for this header" in no_repl.message
    assert recovered.passed


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
def test_timeouts_and_crashes_replace_the_repl(marker, status):
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
    assert new_repls == 1  # the broken REPL was killed and one replacement started


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
def test_real_lean_decides_the_statement():
    statement = "theorem add_comm' (a b : Nat) : a + b = b + a"

    async def scenario():
        pool = LeanReplPool(LeanConfig(project_dir=REAL_PROJECT, repls_per_header=1, timeout_s=120))
        try:
            return [await pool.check("", proof, statement) for proof in (
                statement + " := Nat.add_comm a b",
                f"/- {statement} -/\ntheorem add_comm' (a b : Nat) : a + b = a + b := rfl",
                statement + " := by native_decide",
            )]
        finally:
            await pool.close()

    good, changed, native = run(scenario())
    assert good.status == "passed" and changed.status == "failed" and native.status == "failed"


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
