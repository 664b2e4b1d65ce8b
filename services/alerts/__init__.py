"""Price alerts: their use cases and the checker's index of active alerts."""
