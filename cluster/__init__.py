"""rayworks cluster."""
