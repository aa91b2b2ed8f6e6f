"""Deterministic verifiers: sandboxed Python checks and Lean 4 proof checks (no Ray here)."""
