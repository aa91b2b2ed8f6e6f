"""rayworks envs."""
