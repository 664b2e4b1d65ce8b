"""Portfolio: position arithmetic, valuation, the holdings cache and its version token, and the live portfolio hub."""
