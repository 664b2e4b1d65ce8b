"""Orders: their model and rules, batched placement, the matching book (trailing stops too),
venue routing, fills, cancels, replaces, closing positions and end of day."""
