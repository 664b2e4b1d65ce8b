// PostGraphile 5 (amber preset) on the read benchmark's database: one Node process, no auth,
// as issue 17 measured it. DATABASE_URL and PORT come from bench/reads_vs_postgraphile.py.
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { makePgService } from "postgraphile/adaptors/pg";

export default {
  extends: [PostGraphileAmberPreset],
  pgServices: [
    makePgService({ connectionString: process.env.DATABASE_URL, schemas: ["public"], poolSize: 10 }),
  ],
  grafserv: { port: Number(process.env.PORT), host: "127.0.0.1", graphiql: false },
  // executions.order_id -> orders.id is declared by a smart tag (the partitioned orders table
  // cannot hold that foreign key); orders' unique key is (id, created_at), so let it autofix.
  gather: { pgFakeConstraintsAutofixForeignKeyUniqueness: true },
};
