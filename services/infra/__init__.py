"""Infrastructure every domain shares: settings, PostgreSQL, Redis, streams, pub/sub, the audit log, idempotency keys, the request context and the container that builds them."""
