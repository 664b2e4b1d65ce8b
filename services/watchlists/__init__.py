"""Watchlists: a user's named lists of symbols."""
