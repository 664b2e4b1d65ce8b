"""Orders: their model and rules, batched placement, the matching book, venue routing, fills, cancels and end of day."""
