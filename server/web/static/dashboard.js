// The live dashboard: prices through the priceUpdates subscription, candles per asset, stream
// tickers, runs, sources, drift and anomalies through /graphql queries. Everything comes from
// this service.

import { LiveClient, webSocketUrl } from "./gqlws.js";
import { drawCandles } from "./chart.js";
import { Tickers } from "./tickers.js";

const GRAPHQL_URL = new URL("graphql", location.href).toString();
const REFRESH_MS = 15000; // runs, sources, drift and anomalies, besides the run events
const LIVE_DOWN_REFRESH_MS = 3000; // the same while the subscription is unreachable
const MAX_ROWS = 25; // price rows shown without a filter
const MAX_CHARTS = 6;
const FEED_SIZE = 12;
const INTERVAL_SECONDS = { FIVE_MINUTES: 300, HOUR: 3600, DAY: 86400 };

const PRICE_FIELDS = "id cursor symbol assetId source observedAt priceUsd marketCapUsd volume24hUsd";
const RUN_FIELDS = `id source trigger status startedAt finishedAt durationSeconds
  fetched inserted updated skipped quarantined error`;

const LATEST = `query DashboardLatest { latestPrices { ${PRICE_FIELDS} asset { name } } }`;
const OVERVIEW = `query DashboardOverview($runs: Int!, $events: Int!) {
  health { status reasons database broker embedded version }
  etlRuns(first: $runs) { nodes { ${RUN_FIELDS} } }
  sources {
    name enabled runCount priceCount quarantinedCount
    checkpoints { stream state updatedAt }
    lastRun { source trigger }
    lastSuccess { id finishedAt }
    lastFailure { id finishedAt error }
  }
  driftEvents(first: $events) {
    nodes { id source kind field matchedField confidence action detectedAt }
  }
  anomalies(first: $events) {
    nodes { id kind source score value expected detectedAt asset { symbol } }
  }
}`;
const CANDLES = `query DashboardCandles($symbol: String!, $asset: ID, $interval: CandleInterval!, $to: DateTime) {
  candles(symbol: $symbol, asset: $asset, interval: $interval, to: $to) {
    bucketStart open high low close
  }
}`;
const PRICE_UPDATES = `subscription DashboardPrices($after: String) {
  priceUpdates(after: $after) { ${PRICE_FIELDS} }
}`;
const RUN_EVENTS = `subscription DashboardRuns { etlRunEvents { ${RUN_FIELDS} } }`;

// ---- state ----

const state = {
  assets: new Map(), // assetId -> {assetId, symbol, name, bySource: Map(source -> price)}
  lastCursor: null, // the newest Price.cursor the subscription delivered: resume point
  serverUp: true,
  serverRetryAt: null,
  serverAttempt: 0,
  live: { state: "connecting", retryAt: null, reason: "" },
  liveDownSince: Date.now(),
  needsKey: false, // the server answered 401: reads need a key
  lastUpdateAt: null,
  interval: "HOUR",
  filter: "",
  charts: new Map(), // assetId -> {figure, plot, candles, timer}
  tickers: null, // Tickers: the pairs of streaming sources, tick by tick
};

// ---- small helpers ----

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);

function formatUsd(decimal) {
  if (decimal === null || decimal === undefined) return "–";
  const value = Number(decimal);
  if (!Number.isFinite(value)) return String(decimal);
  const size = Math.abs(value);
  const digits = size >= 1000 ? 2 : size >= 1 ? 4 : size >= 0.01 ? 6 : 10;
  return `$${value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: digits })}`;
}

function formatCompactUsd(decimal) {
  if (decimal === null || decimal === undefined) return "–";
  const value = Number(decimal);
  if (!Number.isFinite(value)) return String(decimal);
  return `$${value.toLocaleString(undefined, { notation: "compact", maximumFractionDigits: 2 })}`;
}

function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return date.toLocaleString(
    undefined,
    today
      ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" },
  );
}

function timeCell(iso) {
  return h("time", { dateTime: iso || "", title: iso || "" }, formatTime(iso));
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function formatCount(value) {
  return value === null || value === undefined ? "–" : value.toLocaleString();
}

function summarizeState(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "object") return String(value);
  return Object.entries(value)
    .map(([key, item]) => `${key}=${typeof item === "object" ? JSON.stringify(item) : item}`)
    .join(" · ");
}

function seconds(ms) {
  return Math.max(0, Math.ceil(ms / 1000));
}

// ---- HTTP ----

class ServerUnreachable extends Error {}

// When the server requires a key for reads (KASPARRO_REQUIRE_READ_KEY), open the dashboard once
// as /dashboard#key=<key>: the key is kept in this browser's storage and the address cleaned.
const KEY_STORAGE = "kasparro.apiKey";

function apiKey() {
  const match = /(?:^|&)key=([^&]+)/.exec(location.hash.slice(1));
  if (match) {
    localStorage.setItem(KEY_STORAGE, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem(KEY_STORAGE);
}

const API_KEY = apiKey();
const AUTH_HEADERS = API_KEY ? { Authorization: `Bearer ${API_KEY}` } : {};

/** POST a GraphQL operation; throws ServerUnreachable when the server does not answer. */
async function graphql(query, variables = {}) {
  let response;
  try {
    response = await fetch(GRAPHQL_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", ...AUTH_HEADERS },
      body: JSON.stringify({ query, variables }),
      cache: "no-store",
    });
  } catch (error) {
    throw new ServerUnreachable(String(error));
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ServerUnreachable(`HTTP ${response.status} without a GraphQL answer`);
  }
  if (response.status === 401) {
    state.needsKey = true;
    renderConnection();
  }
  if (response.status >= 500 && !body.data) {
    throw new ServerUnreachable(`HTTP ${response.status}`);
  }
  if (body.errors?.length) {
    console.warn("GraphQL errors", body.errors);
  }
  return body;
}

function markServer(up) {
  const wasUp = state.serverUp;
  state.serverUp = up;
  if (up) {
    state.serverAttempt = 0;
    state.serverRetryAt = null;
    if (!wasUp) {
      flash("Connected to the server again.");
      live.retryNow();
      reloadCharts();
    }
  }
  renderConnection();
}

let overviewTimer = null;

/** Load the overview now, then every REFRESH_MS; while the server is down, back off. */
async function refreshOverview() {
  clearTimeout(overviewTimer);
  let delay = REFRESH_MS;
  try {
    const body = await graphql(OVERVIEW, { runs: 15, events: 10 });
    markServer(true);
    // While the live socket is down, look again soon: is the whole server away, or the socket?
    if (state.live.state !== "open") delay = LIVE_DOWN_REFRESH_MS;
    if (body.data) renderOverview(body.data);
  } catch (error) {
    if (!(error instanceof ServerUnreachable)) throw error;
    state.serverAttempt += 1;
    delay = Math.min(30000, 1000 * 2 ** Math.min(state.serverAttempt, 5));
    state.serverRetryAt = Date.now() + delay;
    markServer(false);
  }
  overviewTimer = setTimeout(refreshOverview, delay);
}

let latestPending = false;

async function refreshLatest() {
  if (latestPending) return;
  latestPending = true;
  try {
    const body = await graphql(LATEST);
    markServer(true);
    for (const price of body.data?.latestPrices || []) {
      addPrice(price, { quiet: true });
      state.tickers.add(price, { quiet: true });
    }
    state.tickers.render();
    renderPrices();
    syncCharts();
  } catch (error) {
    if (!(error instanceof ServerUnreachable)) throw error;
    markServer(false);
  } finally {
    latestPending = false;
  }
}

// ---- prices ----

/** Keep `price` if it is the newest of its asset and source; true when it changed the table. */
function addPrice(price, { quiet = false } = {}) {
  let asset = state.assets.get(price.assetId);
  if (!asset) {
    asset = { assetId: price.assetId, symbol: price.symbol, name: price.asset?.name || "", bySource: new Map() };
    state.assets.set(price.assetId, asset);
  }
  if (price.asset?.name) asset.name = price.asset.name;
  const known = asset.bySource.get(price.source);
  if (known && new Date(known.observedAt) > new Date(price.observedAt)) return false;
  const previous = newest(asset);
  asset.bySource.set(price.source, price);
  if (!quiet) {
    asset.changed = previous ? Math.sign(Number(newest(asset).priceUsd) - Number(previous.priceUsd)) : 0;
    asset.changedAt = Date.now();
  }
  return true;
}

function newest(asset) {
  let best = null;
  for (const price of asset.bySource.values()) {
    if (!best || new Date(price.observedAt) > new Date(best.observedAt)) best = price;
  }
  return best;
}

function marketCap(asset) {
  let cap = 0;
  for (const price of asset.bySource.values()) cap = Math.max(cap, Number(price.marketCapUsd) || 0);
  return cap;
}

/** The assets shown: matching the filter, biggest market cap first. */
function shownAssets() {
  const filter = state.filter.trim().toLowerCase();
  const all = [...state.assets.values()].filter(
    (a) => !filter || a.symbol.toLowerCase().includes(filter) || a.name.toLowerCase().includes(filter),
  );
  all.sort((a, b) => marketCap(b) - marketCap(a) || a.symbol.localeCompare(b.symbol));
  return { rows: all.slice(0, filter ? 100 : MAX_ROWS), total: all.length };
}

function renderPrices() {
  const { rows, total } = shownAssets();
  const body = $("#prices tbody");
  body.replaceChildren(
    ...rows.map((asset) => {
      const top = newest(asset);
      const recent = asset.changedAt && Date.now() - asset.changedAt < 2000;
      const trend = recent ? (asset.changed > 0 ? "up" : asset.changed < 0 ? "down" : "same") : "";
      const sources = [...asset.bySource.values()].sort((a, b) => a.source.localeCompare(b.source));
      return h(
        "tr",
        { "data-asset": asset.assetId, "data-symbol": asset.symbol, class: trend ? `flash ${trend}` : "" },
        h("th", { scope: "row" }, h("span", { class: "symbol" }, asset.symbol), h("span", { class: "name" }, asset.name)),
        h(
          "td",
          { class: "num" },
          h("span", { class: "price", "data-role": "price", "data-price": top.priceUsd }, formatUsd(top.priceUsd)),
          h("span", { class: "via" }, top.source),
        ),
        h(
          "td",
          { class: "sources hide-sm" },
          sources.map((p) => h("span", { class: "chip", title: `${p.source} at ${p.observedAt}` }, `${p.source} ${formatUsd(p.priceUsd)}`)),
        ),
        h("td", { class: "num hide-sm" }, formatCompactUsd(top.marketCapUsd)),
        h("td", { class: "when" }, timeCell(top.observedAt)),
      );
    }),
  );
  $("#prices-empty").hidden = state.assets.size > 0;
  $("#price-count").textContent = state.assets.size
    ? `${rows.length} of ${total} asset${total === 1 ? "" : "s"}`
    : "";
}

function renderFeed(price) {
  const list = $("#feed");
  list.prepend(
    h(
      "li",
      { "data-symbol": price.symbol },
      h("span", { class: "symbol" }, price.symbol),
      h("span", { class: "price" }, formatUsd(price.priceUsd)),
      h("span", { class: "via" }, price.source),
      timeCell(price.observedAt),
    ),
  );
  while (list.children.length > FEED_SIZE) list.lastElementChild.remove();
  $("#feed-empty").hidden = true;
}

let renderQueued = false;
let pricesChanged = false;
let feedPending = []; // prices received since the last frame, oldest first

/** Draw what arrived at most once per animation frame: a burst of thousands of prices (a
 * backfill) costs one table render and the newest FEED_SIZE feed lines, not one per price. */
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const arrived = feedPending.slice(-FEED_SIZE);
    feedPending = [];
    arrived.forEach(renderFeed);
    state.tickers.render();
    if (pricesChanged) {
      pricesChanged = false;
      renderPrices();
      syncCharts();
    }
    renderConnection();
  });
}

function schedulePriceRender() {
  pricesChanged = true;
  scheduleRender();
}

function onPrice(price) {
  state.lastCursor = price.cursor;
  state.lastUpdateAt = Date.now();
  feedPending.push(price);
  if (feedPending.length > 4 * FEED_SIZE) feedPending = feedPending.slice(-FEED_SIZE);
  state.tickers.add(price);
  if (addPrice(price)) {
    pricesChanged = true;
    const chart = state.charts.get(price.assetId);
    if (chart) scheduleCandles(price.assetId, 1500);
  }
  scheduleRender();
}

// ---- candles ----

function syncCharts() {
  const wanted = shownAssets().rows.slice(0, MAX_CHARTS);
  const grid = $("#charts");
  const keep = new Set(wanted.map((a) => a.assetId));
  for (const [assetId, chart] of state.charts) {
    if (!keep.has(assetId)) {
      clearTimeout(chart.timer);
      chart.figure.remove();
      state.charts.delete(assetId);
    }
  }
  wanted.forEach((asset, index) => {
    let chart = state.charts.get(asset.assetId);
    if (!chart) {
      const plot = h("div", { class: "plot" }, h("p", { class: "muted" }, "Loading…"));
      const caption = h("figcaption", {}, h("span", { class: "symbol" }, asset.symbol), h("span", { class: "close" }, ""));
      const figure = h("figure", { class: "chart", "data-asset": asset.assetId, "data-symbol": asset.symbol }, caption, plot);
      chart = { figure, plot, caption, candles: [], timer: null };
      state.charts.set(asset.assetId, chart);
      scheduleCandles(asset.assetId, 0);
    }
    if (grid.children[index] !== chart.figure) grid.insertBefore(chart.figure, grid.children[index] || null);
  });
  $("#charts-empty").hidden = wanted.length > 0;
}

function reloadCharts() {
  for (const assetId of state.charts.keys()) scheduleCandles(assetId, 0);
}

function scheduleCandles(assetId, delay) {
  const chart = state.charts.get(assetId);
  if (!chart || chart.timer) return;
  chart.timer = setTimeout(() => {
    chart.timer = null;
    loadCandles(assetId);
  }, delay);
}

async function loadCandles(assetId) {
  const asset = state.assets.get(assetId);
  const chart = state.charts.get(assetId);
  if (!asset || !chart) return;
  // The window ends with the asset's newest observation, however old the data is.
  const top = newest(asset);
  const width = INTERVAL_SECONDS[state.interval] * 1000;
  const to = new Date(new Date(top.observedAt).getTime() + width).toISOString();
  try {
    const body = await graphql(CANDLES, { symbol: asset.symbol, asset: assetId, interval: state.interval, to });
    if (body.errors?.length && !body.data) {
      chart.plot.replaceChildren(h("p", { class: "muted" }, body.errors[0].message));
      return;
    }
    chart.candles = body.data?.candles || [];
    drawChart(assetId);
  } catch (error) {
    if (!(error instanceof ServerUnreachable)) throw error;
    markServer(false);
  }
}

function drawChart(assetId) {
  const chart = state.charts.get(assetId);
  if (!chart) return;
  drawCandles(chart.plot, chart.candles, INTERVAL_SECONDS[state.interval]);
  const last = chart.candles[chart.candles.length - 1];
  chart.caption.querySelector(".close").textContent = last ? formatUsd(last.close) : "";
}

// ---- runs, sources, quality ----

function statusBadge(status) {
  return h("span", { class: `badge ${String(status).toLowerCase()}` }, String(status).toLowerCase());
}

function renderOverview(data) {
  if (data.health) renderHealth(data.health);
  if (data.etlRuns) renderRuns(data.etlRuns.nodes);
  if (data.etlRuns) state.tickers.noteRuns(data.etlRuns.nodes);
  if (data.sources) state.tickers.noteRuns(data.sources.map((source) => source.lastRun));
  state.tickers.render();
  if (data.sources) renderSources(data.sources);
  if (data.driftEvents) renderDrift(data.driftEvents.nodes);
  if (data.anomalies) renderAnomalies(data.anomalies.nodes);
}

function renderHealth(health) {
  const pill = $("#health");
  pill.dataset.state = health.status.toLowerCase();
  pill.textContent = health.status === "OK" ? "Healthy" : "Degraded";
  pill.title = [
    `database ${health.database.toLowerCase()}, broker ${health.broker.toLowerCase()}`,
    health.embedded ? "embedded mode" : "",
    `version ${health.version}`,
    ...health.reasons,
  ]
    .filter(Boolean)
    .join("\n");
  $("#reasons").textContent = health.reasons.join(" · ");
}

const runs = new Map(); // id -> run, newest first when rendered

function renderRuns(nodes) {
  runs.clear();
  for (const run of nodes) runs.set(run.id, run);
  drawRuns();
}

function drawRuns() {
  const ordered = [...runs.values()].sort((a, b) => Number(b.id) - Number(a.id)).slice(0, 15);
  $("#runs tbody").replaceChildren(
    ...ordered.map((run) =>
      h(
        "tr",
        { "data-run": run.id, "data-status": run.status },
        h("td", { class: "num" }, `#${run.id}`),
        h("td", {}, run.source, h("span", { class: "via" }, run.trigger)),
        h("td", {}, statusBadge(run.status)),
        h("td", { class: "when" }, timeCell(run.startedAt)),
        h("td", { class: "num hide-sm" }, formatDuration(run.durationSeconds)),
        h("td", { class: "num" }, formatCount(run.fetched)),
        h("td", { class: "num" }, formatCount(run.inserted)),
        h("td", { class: "num hide-sm" }, formatCount(run.updated)),
        h("td", { class: "num hide-sm" }, formatCount(run.skipped)),
        h("td", { class: "num" }, formatCount(run.quarantined)),
        h("td", { class: "error hide-sm", title: run.error || "" }, run.error || ""),
      ),
    ),
  );
  $("#runs-empty").hidden = ordered.length > 0;
}

function onRunEvent(run) {
  state.tickers.noteRuns([run]);
  scheduleRender();
  runs.set(run.id, run);
  drawRuns();
  // A finished run changes sources, drift and anomalies: refresh soon, once per burst.
  if (!["QUEUED", "RUNNING"].includes(run.status)) {
    clearTimeout(onRunEvent.timer);
    onRunEvent.timer = setTimeout(refreshOverview, 500);
  }
}

function renderSources(sources) {
  $("#sources tbody").replaceChildren(
    ...sources.map((source) =>
      h(
        "tr",
        { "data-source": source.name },
        h("th", { scope: "row" }, source.name, source.enabled ? null : h("span", { class: "via" }, "not scheduled")),
        h(
          "td",
          { class: "checkpoint" },
          source.checkpoints.length
            ? source.checkpoints.map((c) =>
                h("div", { title: `updated ${c.updatedAt}` }, c.stream ? h("span", { class: "stream" }, c.stream) : null, summarizeState(c.state)),
              )
            : h("span", { class: "muted" }, "none yet"),
        ),
        h(
          "td",
          { class: "when" },
          source.lastSuccess ? [timeCell(source.lastSuccess.finishedAt), h("span", { class: "via" }, `run #${source.lastSuccess.id}`)] : "–",
        ),
        h(
          "td",
          { class: "when" },
          source.lastFailure
            ? [timeCell(source.lastFailure.finishedAt), h("span", { class: "error-text", title: source.lastFailure.error || "" }, source.lastFailure.error || `run #${source.lastFailure.id}`)]
            : "–",
        ),
        h("td", { class: "num" }, formatCount(source.priceCount)),
        h("td", { class: "num hide-sm" }, formatCount(source.runCount)),
        h("td", { class: "num hide-sm" }, formatCount(source.quarantinedCount)),
      ),
    ),
  );
}

function renderDrift(events) {
  $("#drift tbody").replaceChildren(
    ...events.map((e) =>
      h(
        "tr",
        {},
        h("td", { class: "when" }, timeCell(e.detectedAt)),
        h("td", {}, e.source),
        h("td", {}, e.kind),
        h(
          "td",
          {},
          h("code", {}, e.field),
          e.matchedField ? [" → ", h("code", {}, e.matchedField)] : null,
          e.confidence !== null && e.confidence !== undefined ? h("span", { class: "via" }, `${Math.round(e.confidence * 100)}%`) : null,
        ),
        h("td", {}, e.action),
      ),
    ),
  );
  $("#drift-empty").hidden = events.length > 0;
}

function renderAnomalies(anomalies) {
  $("#anomalies tbody").replaceChildren(
    ...anomalies.map((a) =>
      h(
        "tr",
        {},
        h("td", { class: "when" }, timeCell(a.detectedAt)),
        h("td", {}, a.kind),
        h("td", {}, a.asset?.symbol || "–", h("span", { class: "via" }, a.source)),
        h("td", { class: "num" }, a.score === null || a.score === undefined ? "–" : a.score.toFixed(2)),
        h("td", { class: "num hide-sm" }, a.value ?? "–", a.expected ? h("span", { class: "via" }, `expected ${a.expected}`) : null),
      ),
    ),
  );
  $("#anomalies-empty").hidden = anomalies.length > 0;
}

// ---- connection status ----

function renderConnection() {
  const now = Date.now();
  const pill = $("#live");
  const { state: liveState, retryAt } = state.live;
  pill.dataset.state = liveState;
  document.body.dataset.live = liveState;
  document.body.dataset.server = state.serverUp ? "up" : "down";
  pill.textContent =
    liveState === "open"
      ? "Live"
      : liveState === "waiting"
        ? `Reconnecting in ${seconds(retryAt - now)} s`
        : "Connecting…";
  const banner = $("#banner");
  let message = "";
  if (state.needsKey) {
    message = "This server requires an API key for reads: open this page as /dashboard#key=<your key>.";
  } else if (!state.serverUp) {
    const wait = state.serverRetryAt ? ` Retrying in ${seconds(state.serverRetryAt - now)} s…` : " Retrying…";
    message = `Can't reach the server at ${location.host}: the figures below may be out of date.${wait}`;
  } else if (liveState !== "open" && now - state.liveDownSince > 3000) {
    const wait = liveState === "waiting" ? ` Reconnecting in ${seconds(retryAt - now)} s…` : " Connecting…";
    message = `Live updates are paused: the price subscription is unreachable (${state.live.reason || "no connection"}).${wait}`;
  }
  banner.hidden = !message;
  banner.querySelector(".message").textContent = message;
  $("#last-update").textContent = state.lastUpdateAt ? `last price ${seconds(now - state.lastUpdateAt)} s ago` : "";
}

let flashTimer = null;

function flash(text) {
  const note = $("#note");
  note.textContent = text;
  note.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => {
    note.hidden = true;
  }, 4000);
}

// ---- start ----

const live = new LiveClient(webSocketUrl(GRAPHQL_URL), {
  connectionParams: AUTH_HEADERS,
  onStatus(status) {
    const dropped = state.live.state === "open" && status.state !== "open";
    if (status.state === "open") state.liveDownSince = null;
    else if (dropped || state.liveDownSince === null) state.liveDownSince = Date.now();
    state.live = status;
    renderConnection();
    if (dropped) refreshOverview(); // is the whole server away, or only the socket?
  },
  onReconnect() {
    flash("Live updates resumed.");
    // Resumed from the last cursor seen; a refetch also covers a drop before the first price.
    refreshLatest();
    refreshOverview();
    reloadCharts();
  },
});

function start() {
  state.tickers = new Tickers($("#tickers"), $("#tickers-empty"), formatUsd);
  $("#interval").value = state.interval;
  $("#interval").addEventListener("change", (event) => {
    state.interval = event.target.value;
    reloadCharts();
  });
  $("#price-filter").addEventListener("input", (event) => {
    state.filter = event.target.value;
    renderPrices();
    syncCharts();
  });
  $("#retry").addEventListener("click", () => {
    refreshOverview();
    refreshLatest();
    live.retryNow();
  });
  new ResizeObserver(() => {
    for (const assetId of state.charts.keys()) drawChart(assetId);
  }).observe($("#charts"));

  // Subscribe first, then read the newest prices: nothing falls between the two.
  live.subscribe(
    { query: PRICE_UPDATES, variables: () => (state.lastCursor ? { after: state.lastCursor } : {}) },
    {
      next: (payload) => payload.data?.priceUpdates && onPrice(payload.data.priceUpdates),
      error: (errors) => console.error("priceUpdates refused", errors),
    },
  );
  live.subscribe(
    { query: RUN_EVENTS },
    {
      next: (payload) => payload.data?.etlRunEvents && onRunEvent(payload.data.etlRunEvents),
      error: (errors) => console.error("etlRunEvents refused", errors),
    },
  );
  refreshLatest();
  refreshOverview();
  setInterval(renderConnection, 1000);
}

start();
