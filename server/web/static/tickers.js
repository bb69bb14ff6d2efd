// Stream tickers: one tile per pair of a streaming source (an exchange's WebSocket), updated
// with every stored observation the priceUpdates subscription delivers: last price, its time
// to the second, a flash up or down, and a sparkline of the last SPARK_POINTS ticks.
//
// A source streams when one of its runs was started by its stream (trigger "stream", as
// workers/streams/ records them). Ticks of every source are kept (a few points each), so a
// source found to stream later shows its recent ticks at once.

const SVG = "http://www.w3.org/2000/svg";
const SPARK_POINTS = 60;
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 28;
export const STREAM_TRIGGER = "stream";

function svg(name, attributes = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

/** The sparkline's points for `values` (oldest first), scaled to the box. */
export function sparkPoints(values, width = SPARK_WIDTH, height = SPARK_HEIGHT) {
  if (!values.length) return "";
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (high === low) {
    high += 1;
    low -= 1;
  }
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((value, index) => {
      const x = values.length > 1 ? index * step : width / 2;
      const y = 1 + ((high - value) / (high - low)) * (height - 2);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

function clock(iso) {
  const date = new Date(iso);
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export class Tickers {
  /**
   * `list`: the element holding the tiles; `empty`: shown while there is none;
   * `formatUsd(decimal)`: how prices are written on the page.
   */
  constructor(list, empty, formatUsd) {
    this.list = list;
    this.empty = empty;
    this.formatUsd = formatUsd;
    this.streaming = new Set(); // source names
    this.pairs = new Map(); // `${source} ${assetId}` -> {source, symbol, ...}
    this.dirty = new Set(); // pairs to redraw at the next render
  }

  /** Note the sources that stream, from runs (`{source, trigger}`). */
  noteRuns(runs) {
    for (const run of runs) {
      if (run?.trigger === STREAM_TRIGGER && !this.streaming.has(run.source)) {
        this.streaming.add(run.source);
        for (const pair of this.pairs.values()) if (pair.source === run.source) this.dirty.add(pair);
      }
    }
  }

  /** One observation: a tick, unless older than the pair's last one. `quiet`: no flash. */
  add(price, { quiet = false } = {}) {
    const key = `${price.source} ${price.assetId}`;
    let pair = this.pairs.get(key);
    if (!pair) {
      pair = { key, source: price.source, symbol: price.symbol, values: [], last: null, ticks: 0, node: null, move: 0 };
      this.pairs.set(key, pair);
    }
    if (pair.last && new Date(pair.last.observedAt) >= new Date(price.observedAt)) return;
    const value = Number(price.priceUsd);
    const before = pair.values[pair.values.length - 1];
    pair.values.push(value);
    if (pair.values.length > SPARK_POINTS) pair.values.shift();
    pair.move = quiet || before === undefined ? 0 : Math.sign(value - before);
    pair.flash = !quiet;
    pair.last = price;
    pair.ticks += 1;
    this.dirty.add(pair);
  }

  /** Draw the pairs that changed since the last call (once per animation frame). */
  render() {
    if (!this.dirty.size) return;
    const fresh = [];
    for (const pair of this.dirty) {
      if (!this.streaming.has(pair.source)) continue;
      if (!pair.node) {
        pair.node = this.tile(pair);
        fresh.push(pair);
      }
      this.draw(pair);
    }
    this.dirty.clear();
    if (fresh.length) {
      const shown = [...this.pairs.values()].filter((pair) => pair.node);
      shown.sort((a, b) => a.source.localeCompare(b.source) || a.symbol.localeCompare(b.symbol));
      this.list.replaceChildren(...shown.map((pair) => pair.node));
    }
    this.empty.hidden = this.list.children.length > 0;
  }

  tile(pair) {
    const part = (tag, className, text = "") => {
      const node = document.createElement(tag);
      if (className) node.className = className;
      node.textContent = text;
      return node;
    };
    const head = part("div", "ticker-head");
    head.append(part("span", "symbol", pair.symbol), part("span", "via", pair.source));
    const price = part("span", "price");
    price.dataset.role = "price";
    const line = svg("svg", { class: "spark", viewBox: `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`, preserveAspectRatio: "none", "aria-hidden": "true" });
    line.append(svg("polyline", { points: "" }));
    const node = part("li", "ticker");
    node.dataset.source = pair.source;
    node.dataset.symbol = pair.symbol;
    node.append(head, part("time", ""), price, line, part("span", "ticks via"));
    return node;
  }

  draw(pair) {
    const node = pair.node;
    const price = pair.last;
    const shown = node.querySelector('[data-role="price"]');
    shown.textContent = this.formatUsd(price.priceUsd);
    shown.dataset.price = price.priceUsd;
    const time = node.querySelector("time");
    time.dateTime = price.observedAt;
    time.title = price.observedAt;
    time.textContent = clock(price.observedAt);
    node.dataset.ticks = String(pair.ticks);
    node.querySelector(".ticks").textContent = `${pair.ticks.toLocaleString()} tick${pair.ticks === 1 ? "" : "s"}`;
    node.querySelector(".spark polyline").setAttribute("points", sparkPoints(pair.values));
    if (pair.flash) {
      // Restart the flash: drop the class, let the browser see it gone, set it again.
      node.classList.remove("flash", "up", "down", "same");
      void node.offsetWidth;
      node.classList.add("flash", pair.move > 0 ? "up" : pair.move < 0 ? "down" : "same");
      pair.flash = false;
    }
  }
}
