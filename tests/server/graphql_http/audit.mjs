// Runs graphql-http's audit of the GraphQL-over-HTTP specification against the URL given as
// the first argument and prints each audit's outcome as one JSON array on stdout
// (tests/server/test_graphql_http_audit.py reads it).
import { auditServer } from "graphql-http";

const url = process.argv[2];
if (!url) {
  console.error("usage: node audit.mjs <graphql url>");
  process.exit(2);
}
const results = await auditServer({ url });
const outcomes = await Promise.all(
  results.map(async (result) => ({
    id: result.id,
    name: result.name,
    status: result.status,
    reason: result.status === "ok" ? null : result.reason,
    response:
      result.status === "ok" || !result.response
        ? null
        : {
            status: result.response.status,
            contentType: result.response.headers.get("content-type"),
            body: await result.response.text().catch(() => null),
          },
  })),
);
console.log(JSON.stringify(outcomes));
