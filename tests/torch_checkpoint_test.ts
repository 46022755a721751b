/**
 * A checkpoint written by the trainer loads into the PyTorch reference
 * (tests/reference/logits_of_checkpoint.py, float64) and gives this project's logits. Runs where
 * python3 has torch (the GPU machine); ignored elsewhere, saying why.
 */
import assert from "node:assert/strict";
import { tinyCorpus, tinySettings } from "./tiny_run.ts";
import { CpuBackend } from "../lib/backends/cpu.ts";
import { loadModel } from "../lib/checkpoint.ts";
import { RUN_FILES, train } from "../lib/train.ts";
import { maxRelativeError } from "./backend_conformance.ts";

const SCRIPT = new URL("./reference/logits_of_checkpoint.py", import.meta.url).pathname;

async function hasTorch(): Promise<boolean> {
  try {
    const probe = await new Deno.Command("python3", { args: ["-c", "import torch"], stderr: "null" })
      .output();
    return probe.success;
  } catch {
    return false; // no python3
  }
}

const torchMissing = !(await hasTorch());
if (torchMissing) console.log("torch checkpoint test ignored: python3 cannot import torch here");

const TEXT = "the cat sat on the log.";

for (const bits of [32, 8] as const) {
  Deno.test({
    name:
      `a trained checkpoint (AdamW moments in ${bits} bits) gives the same logits in the PyTorch reference`,
    ignore: torchMissing,
    async fn() {
      const dir = await Deno.makeTempDir();
      try {
        await train(tinySettings(dir, { steps: 12, optimizer_bits: bits }), new CpuBackend(), tinyCorpus());
        const checkpoint = `${dir}/${RUN_FILES.checkpoint}`;
        const output = await new Deno.Command("python3", { args: [SCRIPT, checkpoint, "--text", TEXT] })
          .output();
        assert.ok(output.success, new TextDecoder().decode(output.stderr));
        const torch = JSON.parse(new TextDecoder().decode(output.stdout));

        const model = await loadModel(checkpoint, { backend: new CpuBackend() });
        const bytes = new TextEncoder().encode(TEXT);
        const logits = (await model.forward(bytes, [1, bytes.length])).data; // (1, L, 256)
        const last = logits.subarray((bytes.length - 1) * 256, (bytes.length - 1) * 256 + 8);
        let maxAbs = 0;
        for (const v of logits) maxAbs = Math.max(maxAbs, Math.abs(v));
        assert.ok(maxRelativeError(last, torch.logits) <= 1e-4, `logits ${last} vs PyTorch ${torch.logits}`);
        assert.ok(Math.abs(maxAbs - torch.max_abs_logit) <= 1e-4 * torch.max_abs_logit);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
