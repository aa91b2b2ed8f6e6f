"""rayworks benchmarks."""
