"""rayworks workloads."""
