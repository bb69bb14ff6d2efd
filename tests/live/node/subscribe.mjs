// One GraphQL subscription through the graphql-ws client (protocol graphql-transport-ws),
// as a browser or a Node service would subscribe:
//
//   node subscribe.mjs URL QUERY [VARIABLES_JSON]
//
// Prints one JSON object a line on stdout: {"type":"connected"} once the server acknowledged
// the connection, {"type":"next","data":...} for each result, then {"type":"complete"} (exit 0)
// or {"type":"error","errors":[...]} (exit 1). SIGTERM disposes of the client and exits 0.
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [url, query, variables = "{}"] = process.argv.slice(2);
if (!url || !query) {
  process.stderr.write("usage: node subscribe.mjs URL QUERY [VARIABLES_JSON]\n");
  process.exit(2);
}

const emit = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  on: { connected: () => emit({ type: "connected" }) },
});

const finish = async (code) => {
  await client.dispose();
  process.exit(code);
};
process.on("SIGTERM", () => finish(0));

// What iterate() throws: the GraphQL errors of an `error` message, an Error, or a CloseEvent.
const describe = (failure) => {
  if (Array.isArray(failure)) return failure;
  if (failure instanceof Error) return [{ message: failure.message }];
  return [{ message: `connection closed: ${failure?.code} ${failure?.reason ?? ""}`.trim() }];
};

try {
  for await (const result of client.iterate({ query, variables: JSON.parse(variables) })) {
    if (result.errors) {
      emit({ type: "error", errors: result.errors });
      await finish(1);
    }
    emit({ type: "next", data: result.data });
  }
  emit({ type: "complete" });
  await finish(0);
} catch (failure) {
  emit({ type: "error", errors: describe(failure) });
  await finish(1);
}
