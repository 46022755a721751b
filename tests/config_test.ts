/** MambaConfig: the seed's defaults, derived fields, and validation messages. */
import assert from "node:assert/strict";
import { MambaConfig } from "../lib/config.ts";
import { paramTable } from "../lib/params.ts";

Deno.test("defaults are the seed's, and derived fields are computed", () => {
  const c = new MambaConfig({ dim: 40, depth: 3 });
  assert.deepEqual(c.toJSON(), {
    dim: 40,
    depth: 3,
    dt_rank: 3, // ceil(40 / 16)
    d_state: 16,
    expand_factor: 2,
    d_conv: 4,
    dt_min: 0.001,
    dt_max: 0.1,
    dt_init: "random",
    dt_scale: 1.0,
    dt_init_floor: 1e-4,
    bias: false,
    conv_bias: true,
    pscan: true,
  });
  assert.equal(c.d_inner, 80);
  assert.equal(c.vocab_size, 256);
});

Deno.test("invalid values name the field, the value and what is allowed", () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ dim: -4, depth: 2 }, /dim is -4; it must be a positive integer/],
    [{ dim: 4.5, depth: 2 }, /dim is 4.5; it must be a positive integer/],
    [{ dim: 4, depth: 0 }, /depth is 0/],
    [{ dim: 4 }, /depth is undefined/],
    [{ dim: 4, depth: 2, dt_rank: "big" }, /dt_rank is "big"; it must be a positive integer or "auto"/],
    [{ dim: 4, depth: 2, dt_min: 0.2, dt_max: 0.1 }, /dt_min \(0.2\) must be smaller than dt_max \(0.1\)/],
    [{ dim: 4, depth: 2, dt_init: "xavier" }, /dt_init is "xavier"; allowed: "random" or "constant"/],
    [{ dim: 4, depth: 2, bias: "yes" }, /bias is "yes"; it must be true or false/],
    [{ dim: 4, depth: 2, d_model: 4 }, /unknown field "d_model"; allowed fields are dim, depth, dt_rank/],
  ];
  for (const [options, message] of cases) {
    assert.throws(() => new MambaConfig(options as never), message);
  }
});

Deno.test("the parameter table uses mamba_ssm names, aligned offsets and the seed's init kinds", () => {
  const c = new MambaConfig({ dim: 8, depth: 2, d_state: 4, bias: true });
  const t = paramTable(c, true);
  const names = t.specs.map((s) => s.name);
  assert.equal(names[0], "backbone.embedding.weight");
  assert.ok(names.includes("backbone.layers.1.mixer.in_proj.bias"));
  assert.ok(names.includes("backbone.layers.0.mixer.A_log"));
  assert.deepEqual(names.slice(-2), ["backbone.norm_f.weight", "lm_head.weight"]);
  const conv = t.specs.find((s) => s.name === "backbone.layers.0.mixer.conv1d.weight")!;
  assert.deepEqual(conv.shape, [16, 1, 4]);
  for (const s of t.specs) assert.equal(s.offset % 64, 0, `${s.name} offset ${s.offset}`);
  const count = 2 * (256 * 8) + 8 +
    2 * (8 + 2 * 16 * 8 + 2 * 16 + 16 * 4 + 16 + (1 + 8) * 16 + 16 + 16 + 16 * 4 + 16 + 8 * 16 + 8);
  assert.equal(t.count, count);
});
