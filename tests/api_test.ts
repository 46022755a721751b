/** The public API as a user meets it: exactly the example, and mod.ts's import graph. */
import assert from "node:assert/strict";
import { Mamba, MambaByte, MambaConfig, tensor } from "../mod.ts";

Deno.test("the public example runs: Mamba (B, L, D) → (B, L, D) and MambaByte logits (1, L, 256)", async () => {
  const config = new MambaConfig({
    dim: 4,
    depth: 3,
    dt_rank: 2,
    d_state: 2,
    expand_factor: 2,
    d_conv: 3,
    dt_min: 0.001,
    dt_max: 0.1,
    dt_init: "random",
    dt_scale: 1.0,
    bias: false,
    conv_bias: true,
    pscan: true,
  });
  const model = new Mamba(config);
  const out = await model.forward(tensor(new Float32Array(24), [2, 3, 4]));
  assert.deepEqual(out.shape, [2, 3, 4]);
  assert.ok(out.data instanceof Float32Array);
  assert.equal(out.data.length, 24);
  const lm = new MambaByte(new MambaConfig({ dim: 32, depth: 2 }));
  const bytes = new TextEncoder().encode("MambaByte reads bytes.");
  const logits = await lm.forward(bytes, [1, bytes.length]);
  assert.deepEqual(logits.shape, [1, bytes.length, 256]);
  assert.ok(logits.data.every(Number.isFinite));
});

Deno.test("mod.ts imports only relative modules and node: built-ins (so it loads from a URL)", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL("../mod.ts", import.meta.url).pathname],
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  const graph = JSON.parse(new TextDecoder().decode(output.stdout));
  const root = new URL("../", import.meta.url).href;
  for (const module of graph.modules) {
    const specifier: string = module.specifier;
    assert.ok(
      specifier.startsWith(root) || specifier.startsWith("node:"),
      `mod.ts depends on ${specifier}: the library must stay free of dependencies`,
    );
  }
  assert.ok(graph.modules.length > 5, "the graph should list the library's modules");
});
