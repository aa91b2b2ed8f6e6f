"""HANDOFF: one humanoid controller distilled from several specialists (METHODS.md, "HANDOFF").

- `student`: the mixture-of-experts student (a gate on the command and on whether the robot is
  down mixes expert heads), the dense ablation of the same size, the multi-teacher KL DAgger
  loss through the shared distillation core, and the teacher-action mixing schedule.
- `metrics`: what the student is judged on against each specialist on its own task.
"""
