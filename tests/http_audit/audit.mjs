// The GraphQL-over-HTTP audit of graphql-http against a running server: one JSON line of
// results ({id, name, status: "ok" | "warn" | "error", reason}) on stdout.
import { auditServer } from 'graphql-http';

const url = process.argv[2];
const results = await auditServer({ url });
const summary = await Promise.all(
  results.map(async (result) => ({
    id: result.id,
    name: result.name,
    status: result.status,
    reason: result.status === 'ok' ? undefined : result.reason,
    body: result.status === 'ok' ? undefined : await result.response?.text?.().catch(() => undefined),
  })),
);
console.log(JSON.stringify(summary));
