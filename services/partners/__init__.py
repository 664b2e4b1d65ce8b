"""Partners: API keys and their trusted documents."""
