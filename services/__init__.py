"""Domain logic and persistence, one package per domain.

`orders`, `market_data`, `accounts`, `portfolio`, `alerts`, `partners` and `watchlists` hold the
domains; `infra` holds what they share (settings, PostgreSQL, Redis, streams, pub/sub, the audit
log, idempotency keys, the container); `money` and `errors` are the vocabulary of all of them.
No module here imports from `schema/` or `resolvers/`.
"""
