"""rayworks actors."""
