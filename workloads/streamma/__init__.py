"""StreamMA: streaming multi-agent reasoning (topologies, role data, step writers)."""
