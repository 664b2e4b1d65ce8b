"""Accounts: users, sessions and passwords, cash and deposits, the double-entry ledger and the reconciliation that checks it."""
