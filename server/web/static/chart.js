// Candlestick charts drawn as SVG, sized to their container (no chart library).

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 180;
const PAD = { top: 10, right: 64, bottom: 22, left: 6 };

function el(name, attributes = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Prices rounded for an axis: enough digits to tell the ticks apart. */
function axisLabel(value, step) {
  const digits = step >= 1 ? (step >= 100 ? 0 : 2) : Math.min(8, Math.ceil(-Math.log10(step)) + 1);
  return value.toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function timeLabel(date, intervalSeconds) {
  const options =
    intervalSeconds >= 86400
      ? { month: "short", day: "numeric" }
      : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return date.toLocaleString(undefined, options);
}

/**
 * Draw `candles` ({bucketStart, open, high, low, close} with decimal strings) into `container`,
 * replacing what was there. `intervalSeconds` is the bucket width.
 */
export function drawCandles(container, candles, intervalSeconds) {
  const width = Math.max(container.clientWidth, 240);
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${HEIGHT}`,
    width: "100%",
    height: HEIGHT,
    role: "img",
    class: "candles",
  });
  const rows = candles.map((c) => ({
    t: new Date(c.bucketStart),
    open: Number(c.open),
    high: Number(c.high),
    low: Number(c.low),
    close: Number(c.close),
  }));
  svg.setAttribute(
    "aria-label",
    rows.length ? `${rows.length} candles, last close ${rows[rows.length - 1].close}` : "no candles",
  );
  if (!rows.length) {
    svg.append(el("text", { x: width / 2, y: HEIGHT / 2, class: "axis empty-chart" }, "No candles yet"));
    container.replaceChildren(svg);
    return;
  }

  let low = Math.min(...rows.map((r) => r.low));
  let high = Math.max(...rows.map((r) => r.high));
  if (high === low) {
    const margin = Math.abs(high) * 0.001 || 1;
    high += margin;
    low -= margin;
  }
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const y = (v) => PAD.top + ((high - v) / (high - low)) * plotH;

  // Time axis: the buckets of the window, oldest left; a lone candle sits in the middle.
  const first = rows[0].t.getTime();
  const last = rows[rows.length - 1].t.getTime();
  const bucketMs = intervalSeconds * 1000;
  const slots = Math.max(1, Math.round((last - first) / bucketMs) + 1);
  const slotW = plotW / slots;
  const x = (t) => PAD.left + ((t.getTime() - first) / bucketMs + 0.5) * slotW;
  const bodyW = Math.max(1, Math.min(18, slotW * 0.7));

  const ticks = 4;
  const step = (high - low) / ticks;
  for (let i = 0; i <= ticks; i++) {
    const value = low + step * i;
    const ty = y(value);
    svg.append(el("line", { x1: PAD.left, x2: PAD.left + plotW, y1: ty, y2: ty, class: "grid" }));
    svg.append(el("text", { x: width - PAD.right + 6, y: ty + 4, class: "axis" }, axisLabel(value, step)));
  }
  const labelled = slots === 1 ? [rows[0]] : [rows[0], rows[rows.length - 1]];
  labelled.forEach((row, index) => {
    const anchor = slots === 1 ? "middle" : index === 0 ? "start" : "end";
    const lx = slots === 1 ? x(row.t) : index === 0 ? PAD.left : PAD.left + plotW;
    svg.append(
      el("text", { x: lx, y: HEIGHT - 6, class: "axis", "text-anchor": anchor }, timeLabel(row.t, intervalSeconds)),
    );
  });

  for (const row of rows) {
    const cx = x(row.t);
    const up = row.close >= row.open;
    const group = el("g", { class: `candle ${up ? "up" : "down"}` });
    group.append(el("title", {}, `${row.t.toLocaleString()}  O ${row.open}  H ${row.high}  L ${row.low}  C ${row.close}`));
    group.append(el("line", { x1: cx, x2: cx, y1: y(row.high), y2: y(row.low), class: "wick" }));
    const top = y(Math.max(row.open, row.close));
    const bottom = y(Math.min(row.open, row.close));
    group.append(
      el("rect", { x: cx - bodyW / 2, y: top, width: bodyW, height: Math.max(1, bottom - top), class: "body" }),
    );
    svg.append(group);
  }
  const close = rows[rows.length - 1].close;
  const cy = y(close);
  svg.append(el("line", { x1: PAD.left, x2: PAD.left + plotW, y1: cy, y2: cy, class: "last" }));
  container.replaceChildren(svg);
}
