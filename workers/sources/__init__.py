"""Market data sources: where quotes come from before the platform normalizes and carries them."""
