"use strict";
// PostGraphile 4 for bench/queries.py: one process, the production settings of PostGraphile's
// docs (no GraphiQL, no watch, no query log, RBAC and indexes respected), the default
// inflector (allPrices, assetByAssetId). DATABASE_URL, HOST and PORT come from the environment.
const http = require("node:http");
const { postgraphile } = require("postgraphile");

const { DATABASE_URL, PORT, HOST = "127.0.0.1" } = process.env;
const middleware = postgraphile(DATABASE_URL, "public", {
  graphiql: false,
  enhanceGraphiql: false,
  watchPg: false,
  disableQueryLog: true,
  ignoreRBAC: false,
  ignoreIndexes: false,
  setofFunctionsContainNulls: false,
  legacyRelations: "omit",
  dynamicJson: true,
  extendedErrors: ["errcode"],
  enableQueryBatching: false,
  retryOnInitFail: false,
});
http.createServer(middleware).listen(Number(PORT), HOST);
