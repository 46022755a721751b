#!/usr/bin/env python3
"""Converts a PyTorch state dict (.bin / .pt) to a float32 safetensors checkpoint.

    python3 tests/reference/convert_to_safetensors.py model.bin out.safetensors \
        [--config '{"dim": 512, "depth": 8, ...}' | --config config.json] [--unsafe-pickle]

* torch.load(map_location="cpu"); a top-level {"model": ...} or {"state_dict": ...} wrapper is
  unwrapped, and "module." / "_orig_mod." prefixes (DDP, torch.compile) are stripped.
* Floating-point tensors are written as float32; other entries are skipped (with a note).
* If lm_head.weight is missing but backbone.embedding.weight exists (tied weights), lm_head.weight
  is written as a copy of the embedding.
* Metadata: {"format": "mambabyte", "config": JSON}; the config is --config (a JSON string or a
  path to a JSON file, with dt_rank "auto" resolved) or, without it, inferred from the shapes.
* By default the file is loaded with weights_only=True; --unsafe-pickle allows full unpickling,
  which runs arbitrary code from the file: only for files you trust.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from mambabyte_ref import MambaConfig, infer_config, save_safetensors  # noqa: E402

PREFIXES = ("module.", "_orig_mod.")


def load_state_dict(path, unsafe):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if not unsafe:
            raise SystemExit(f"{path}: cannot load with weights_only=True ({e}); if you trust "
                             "the file, rerun with --unsafe-pickle")
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def clean_name(name):
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                changed = True
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="PyTorch state dict (.bin / .pt)")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--config", help="MambaConfig fields: a JSON string or a path to a JSON file")
    ap.add_argument("--unsafe-pickle", action="store_true",
                    help="allow full unpickling when weights_only loading fails (trusted files)")
    args = ap.parse_args()

    state = load_state_dict(args.input, args.unsafe_pickle)
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            print(f"skipping {name}: not a tensor", file=sys.stderr)
            continue
        if not value.is_floating_point():
            print(f"skipping {name}: dtype {value.dtype}", file=sys.stderr)
            continue
        tensors[clean_name(name)] = value.detach().to(torch.float32).contiguous()
    if "lm_head.weight" not in tensors and "backbone.embedding.weight" in tensors:
        print("lm_head.weight missing: writing a copy of backbone.embedding.weight (tied)",
              file=sys.stderr)
        tensors["lm_head.weight"] = tensors["backbone.embedding.weight"].clone()

    metadata = {"format": "mambabyte"}
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            with open(text, "r", encoding="utf-8") as f:
                text = f.read()
        metadata["config"] = json.dumps(MambaConfig.from_dict(json.loads(text)).to_dict())
    else:
        try:
            metadata["config"] = json.dumps(infer_config(tensors).to_dict())
            print("config inferred from shapes (init-only fields at defaults): "
                  + metadata["config"], file=sys.stderr)
        except (KeyError, ValueError) as e:
            print(f"no config written (cannot infer it from the shapes: {e})", file=sys.stderr)

    save_safetensors(args.output, tensors, metadata)
    print(f"wrote {args.output}: {len(tensors)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
