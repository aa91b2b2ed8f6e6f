"""rayworks serving."""
