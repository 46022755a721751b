/**
 * Hand-written SVG line plots (no dependencies) that open in any browser: loss.svg (training
 * and validation bits per byte against step) and comparisons of several runs.
 */

/** One point of the metrics log (metrics.jsonl's fields). */
export interface MetricPoint {
  step: number;
  bpb: number;
  val_bpb?: number;
}

const W = 640, H = 400, LEFT = 60, RIGHT = 20, TOP = 40, BOTTOM = 50;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/** One line of a plot: a name for the legend and its (x, y) points. */
export interface Series {
  name: string;
  points: (readonly [number, number])[];
}

/** An SVG document plotting `bpb` (train) and `val_bpb` (validation) against `step`. */
export function lossPlotSvg(points: MetricPoint[], title = "MambaByte training"): string {
  return linePlotSvg([
    { name: "train bpb", points: points.map((p) => [p.step, p.bpb] as const) },
    {
      name: "validation bpb",
      points: points.filter((p) => p.val_bpb !== undefined).map((p) => [p.step, p.val_bpb!] as const),
    },
  ], { title, xLabel: "step", yLabel: "bits per byte" });
}

/** An SVG line plot of several series (non-finite points are left out), with a legend. */
export function linePlotSvg(
  series: Series[],
  labels: { title: string; xLabel: string; yLabel: string },
): string {
  const lines = series.map((s) => ({ ...s, points: s.points.filter(([x, y]) => Number.isFinite(x + y)) }));
  const all = lines.flatMap((s) => s.points);
  const xs = all.map(([x]) => x), ys = all.map(([, y]) => y);
  const [x0, x1] = span(xs.length ? Math.min(...xs) : 0, xs.length ? Math.max(...xs) : 1);
  const [y0, y1] = span(ys.length ? Math.min(...ys) : 0, ys.length ? Math.max(...ys) : 8);
  const px = (x: number) => LEFT + ((x - x0) / (x1 - x0)) * (W - LEFT - RIGHT);
  const py = (y: number) => H - BOTTOM - ((y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
  const f = (v: number) => v.toFixed(1);
  const line = (pts: (readonly [number, number])[], color: string) =>
    pts.length === 0
      ? ""
      : `<polyline fill="none" stroke="${color}" stroke-width="2" points="${
        pts.map(([x, y]) => `${f(px(x))},${f(py(y))}`).join(" ")
      }"/>\n` + pts.map(([x, y]) =>
        `<circle cx="${f(px(x))}" cy="${f(py(y))}" r="2.5" fill="${color}"/>`
      ).join("");
  const grid: string[] = [];
  for (const y of ticks(y0, y1)) {
    grid.push(
      `<line x1="${LEFT}" x2="${W - RIGHT}" y1="${f(py(y))}" y2="${f(py(y))}" stroke="#ddd"/>`,
      `<text x="${LEFT - 6}" y="${f(py(y) + 4)}" text-anchor="end">${+y.toFixed(3)}</text>`,
    );
  }
  for (const x of ticks(x0, x1)) {
    grid.push(`<text x="${f(px(x))}" y="${H - BOTTOM + 18}" text-anchor="middle">${+x.toFixed(3)}</text>`);
  }
  const legendWidth = 52 + 6.5 * Math.max(...lines.map((s) => s.name.length), 8);
  const legend = lines.map((s, i) => {
    const y = TOP + 22 + 18 * i, color = COLORS[i % COLORS.length], x = W - RIGHT - legendWidth;
    return `<line x1="${x + 10}" x2="${x + 35}" y1="${y}" y2="${y}" stroke="${color}" stroke-width="2"/>` +
      `<text x="${x + 42}" y="${y + 4}">${escapeXml(s.name)}</text>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${escapeXml(labels.title)}</text>
${grid.join("\n")}
<rect x="${LEFT}" y="${TOP}" width="${W - LEFT - RIGHT}" height="${
      H - TOP - BOTTOM
    }" fill="none" stroke="#333"/>
<text x="${W / 2}" y="${H - 12}" text-anchor="middle">${escapeXml(labels.xLabel)}</text>
<text transform="translate(16 ${H / 2}) rotate(-90)" text-anchor="middle">${escapeXml(labels.yLabel)}</text>
${lines.map((s, i) => line(s.points, COLORS[i % COLORS.length])).join("\n")}
<rect x="${W - RIGHT - legendWidth}" y="${TOP + 8}" width="${legendWidth - 10}" height="${
      8 + 18 * lines.length
    }" fill="white" stroke="#999"/>
${legend.join("\n")}
</svg>
`;
}

/** [lo, hi] widened when empty, so the scale never divides by zero. */
function span(lo: number, hi: number): [number, number] {
  return hi > lo ? [lo, hi] : [lo - 1, hi + 1];
}

/** About five round tick values in [lo, hi]. */
function ticks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const stepSize = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / stepSize) * stepSize; v <= hi + 1e-9 * stepSize; v += stepSize) out.push(v);
  return out;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]!);
}
