"""Code2LoRA: repository-specific LoRA adapters written by a hypernetwork. This package holds
the plain-Python parts: reading git repositories (`repos`) and mining the assertion-completion
task from their tests (`mining`)."""
