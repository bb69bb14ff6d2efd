// Kasparro's GraphiQL page: GraphiQL with the explorer plugin, queries over HTTP, subscriptions
// over graphql-transport-ws through the client shared with the dashboard, and a banner that
// says when the server or the subscription cannot be reached (both recover by themselves).

import { LiveClient, webSocketUrl } from "./gqlws.js";

const { React, ReactDOM, GraphiQL, GraphiQLPluginExplorer } = window;

const GRAPHQL_URL = location.href.split(/[?#]/)[0];
const HEALTH_URL = new URL("healthz", GRAPHQL_URL).toString();

const DEFAULT_QUERY = `# Kasparro's GraphQL API. Run with Ctrl-Enter or the ▶ button;
# the Docs and Explorer buttons on the left list every field.
{
  health { status database broker }
  latestPrices(symbols: ["BTC", "ETH"]) { symbol source priceUsd observedAt }
}

# Live prices: run this one to watch them arrive.
# subscription { priceUpdates(symbols: ["BTC"]) { symbol source priceUsd observedAt } }
`;

// ---- the banner ----

const banner = document.getElementById("kasparro-status");
const bannerText = banner.querySelector(".message");
const connection = {
  serverUp: true,
  retryAt: null,
  attempt: 0,
  timer: null,
  schemaLoaded: false,
  live: { state: "connecting" },
  subscriptions: 0,
};
let restoredTimer = null;

function showBanner() {
  const now = Date.now();
  const wait = (at) => (at ? ` Retrying in ${Math.max(0, Math.ceil((at - now) / 1000))} s…` : " Retrying…");
  let message = "";
  if (!connection.serverUp) {
    message = `Can't reach the server at ${location.host}.${wait(connection.retryAt)}`;
  } else if (connection.subscriptions > 0 && connection.live.state === "waiting") {
    message = `The subscription is disconnected (${connection.live.reason}).${wait(connection.live.retryAt)}`;
  }
  if (message) {
    clearTimeout(restoredTimer);
    restoredTimer = null;
    banner.dataset.kind = "down";
    bannerText.textContent = message;
    banner.hidden = false;
  } else if (banner.dataset.kind === "down") {
    banner.dataset.kind = "restored";
    bannerText.textContent = "Connected to the server again.";
    restoredTimer = setTimeout(() => {
      banner.hidden = true;
      banner.dataset.kind = "";
    }, 3000);
  }
}

setInterval(() => {
  if (banner.dataset.kind === "down") showBanner();
}, 1000);

banner.querySelector(".retry").addEventListener("click", () => {
  probeServer();
  live.retryNow();
});

// ---- HTTP: watch every request, probe /healthz while the server is away ----

function serverDown() {
  if (connection.serverUp) {
    connection.serverUp = false;
    connection.attempt = 0;
    scheduleProbe();
  }
  showBanner();
}

function serverUp() {
  const wasDown = !connection.serverUp;
  connection.serverUp = true;
  connection.retryAt = null;
  clearTimeout(connection.timer);
  showBanner();
  if (wasDown) {
    live.retryNow();
    // GraphiQL loads the schema once: start it again if that first load failed.
    if (!connection.schemaLoaded) render();
  }
}

function scheduleProbe() {
  const delay = Math.min(15000, 1000 * 2 ** connection.attempt);
  connection.attempt += 1;
  connection.retryAt = Date.now() + delay;
  clearTimeout(connection.timer);
  connection.timer = setTimeout(probeServer, delay);
}

async function probeServer() {
  try {
    const response = await fetch(HEALTH_URL, { cache: "no-store" });
    if (response.ok) {
      serverUp();
      return;
    }
  } catch {
    // still away
  }
  if (!connection.serverUp) {
    scheduleProbe();
    showBanner();
  }
}

async function watchedFetch(input, init) {
  let response;
  try {
    response = await fetch(input, init);
  } catch (error) {
    serverDown();
    throw error;
  }
  if (response.status >= 502 && response.status <= 504) {
    serverDown();
  } else {
    if (response.ok && String(init?.body || "").includes("IntrospectionQuery")) {
      connection.schemaLoaded = true;
    }
    serverUp();
  }
  return response;
}

window.addEventListener("offline", serverDown);
window.addEventListener("online", probeServer);

// ---- subscriptions over the WebSocket ----

const live = new LiveClient(webSocketUrl(GRAPHQL_URL), {
  onStatus(status) {
    connection.live = status;
    showBanner();
  },
});

/** The kind of the operation GraphiQL runs: query, mutation or subscription. */
function operationKind(source, operationName) {
  const text = source.replace(/"""[\s\S]*?"""|"(?:\\.|[^"\\])*"|#[^\n\r]*/g, " ");
  const operations = [];
  let depth = 0;
  const token = /[{}()]|[_A-Za-z][_0-9A-Za-z]*/g;
  let match;
  let pending = null; // an operation keyword at depth 0, waiting for its name
  while ((match = token.exec(text))) {
    const word = match[0];
    if (word === "{" || word === "(") {
      if (depth === 0 && word === "{" && pending === null && operations.length === 0) {
        operations.push({ kind: "query", name: null });
      }
      if (pending !== null && depth === 0) {
        operations.push({ kind: pending, name: null });
        pending = null;
      }
      depth += 1;
    } else if (word === "}" || word === ")") {
      depth = Math.max(0, depth - 1);
    } else if (depth === 0) {
      if (pending !== null) {
        operations.push({ kind: pending, name: word });
        pending = null;
      } else if (["query", "mutation", "subscription"].includes(word)) {
        pending = word;
      }
    }
  }
  const chosen = operationName ? operations.find((o) => o.name === operationName) : operations[0];
  return chosen?.kind || "query";
}

function subscriptionObservable(params) {
  return {
    subscribe(observer) {
      connection.subscriptions += 1;
      let active = true;
      const finish = () => {
        if (active) {
          active = false;
          connection.subscriptions -= 1;
          showBanner();
        }
      };
      const stop = live.subscribe(
        { query: params.query, variables: params.variables || {}, operationName: params.operationName },
        {
          next: (payload) => observer.next(payload),
          error: (errors) => {
            observer.next({ errors });
            observer.complete();
            finish();
          },
          complete: () => {
            observer.complete();
            finish();
          },
        },
      );
      return {
        unsubscribe() {
          stop();
          finish();
        },
      };
    },
  };
}

const httpFetcher = GraphiQL.createFetcher({ url: GRAPHQL_URL, fetch: watchedFetch });

function fetcher(params, options) {
  if (operationKind(params.query || "", params.operationName) === "subscription") {
    // The headers editor's Authorization or X-API-Key go in connection_init.
    live.setConnectionParams(options?.headers || {});
    return subscriptionObservable(params);
  }
  return httpFetcher(params, options);
}

// ---- GraphiQL ----

const root = ReactDOM.createRoot(document.getElementById("graphiql"));
const explorer = GraphiQLPluginExplorer.explorerPlugin();
let generation = 0;

function render() {
  generation += 1;
  root.render(
    React.createElement(GraphiQL, {
      key: generation,
      fetcher,
      defaultQuery: DEFAULT_QUERY,
      plugins: [explorer],
      defaultEditorToolsVisibility: false,
      inputValueDeprecation: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
    }),
  );
}

render();
