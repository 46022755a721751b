/** The SVG plots: one polyline per series, non-finite points left out, names escaped. */
import assert from "node:assert/strict";
import { linePlotSvg, lossPlotSvg } from "../lib/plot.ts";

Deno.test("a line plot draws each series, skips non-finite points and escapes names", () => {
  const svg = linePlotSvg([
    { name: "a <dense>", points: [[0, 2], [1, NaN], [2, 1]] },
    { name: "b & moe", points: [[0, 3], [2, Infinity]] },
  ], { title: "t", xLabel: "step", yLabel: "bpb" });
  assert.equal(svg.match(/<polyline /g)?.length, 2);
  assert.equal(svg.match(/<circle /g)?.length, 3); // 2 finite points + 1
  assert.ok(svg.includes("a &lt;dense&gt;") && svg.includes("b &amp; moe"));
  assert.ok(!svg.includes("NaN") && !svg.includes("Infinity"));
});

Deno.test("loss.svg plots training and validation bits per byte", () => {
  const svg = lossPlotSvg([{ step: 10, bpb: 5 }, { step: 20, bpb: 4, val_bpb: 4.5 }]);
  assert.ok(svg.includes("train bpb") && svg.includes("validation bpb"));
  assert.equal(svg.match(/<polyline /g)?.length, 2);
});
