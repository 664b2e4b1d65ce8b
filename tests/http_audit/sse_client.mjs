// The graphql-sse client (distinct connections mode, as a browser app uses it) against a running
// server: subscribes to a document, prints each result as a JSON line, and after `count`
// results disposes of the subscription and prints "disposed"; a stream the server completes
// or fails ends the script too (its error printed as the last line).
import { createClient } from 'graphql-sse';

const [url, query, count, token] = process.argv.slice(2);
const client = createClient({
  url,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
  retryAttempts: 0,
});
let received = 0;
await new Promise((resolve) => {
  const dispose = client.subscribe(
    { query },
    {
      next(result) {
        console.log(JSON.stringify(result));
        received += 1;
        if (received >= Number(count)) {
          dispose();
          console.log(JSON.stringify('disposed'));
          resolve();
        }
      },
      error(error) {
        console.log(JSON.stringify({ clientError: String(error?.message ?? error) }));
        resolve();
      },
      complete: resolve,
    },
  );
});
client.dispose();
