#!/usr/bin/env python3
"""Runs a safetensors checkpoint (e.g. one written by the TypeScript trainer) through the PyTorch
reference and prints, as JSON on stdout,

    {"max_abs_logit": <max |logit| over all positions>, "logits": [first 8 logits of the last
     position]}

for the UTF-8 bytes of --text, so the TypeScript side can be checked against PyTorch:

    python3 tests/reference/logits_of_checkpoint.py ckpt.safetensors --text "Hello, world"

The config comes from the metadata key "config" (JSON of the MambaConfig fields) or, when it is
absent, from the tensor shapes. Tensors the model does not use (optimizer state, ...) are
ignored. Computed in float64 unless --dtype float32.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from mambabyte_ref import load_lm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="logits of a MambaByte safetensors checkpoint")
    ap.add_argument("checkpoint", help=".safetensors file (mamba_ssm tensor names)")
    ap.add_argument("--text", required=True, help="prompt; its UTF-8 bytes are the input")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = ap.parse_args()

    data = args.text.encode("utf-8")
    if not data:
        raise SystemExit("--text must not be empty")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    model, _ = load_lm(args.checkpoint, dtype)
    model.eval()
    tokens = torch.tensor(list(data), dtype=torch.int64).unsqueeze(0)  # (1, L)
    with torch.no_grad():
        logits = model(tokens)  # (1, L, 256)
    print(json.dumps({
        "max_abs_logit": float(logits.abs().max()),
        "logits": [float(v) for v in logits[0, -1, :8]],
    }))


if __name__ == "__main__":
    main()
