"""Benchmark the PyTorch reference (the seed's model, Blelloch pscan) beside `deno task bench`.

Prints one JSON object per line, which `deno task bench --torch` reads:
  {"what": "train", "dim": …, "depth": …, "batch": …, "length": …, "bytes_per_s": …, "peak_gib": …}
  {"what": "decode", "dim": …, "depth": …, "bytes_per_s": …}

    python3 tests/reference/bench_torch.py --train 512,8,8,2048 --decode 1024,16
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mambabyte_ref import MambaByteLM, MambaConfig  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_train(device, dim, depth, batch, length, steps):
    torch.manual_seed(0)
    model = MambaByteLM(MambaConfig(dim=dim, depth=depth)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(32, 127, (batch, length + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
        loss.backward()
        optimizer.step()

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        step()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        seconds = (time.perf_counter() - start) / steps
    except torch.cuda.OutOfMemoryError:
        return {"what": "train", "dim": dim, "depth": depth, "batch": batch, "length": length,
                "bytes_per_s": None, "peak_gib": None, "error": "out of memory"}
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"what": "train", "dim": dim, "depth": depth, "batch": batch, "length": length,
            "bytes_per_s": batch * length / seconds, "peak_gib": peak}


@torch.no_grad()
def bench_decode(device, dim, depth, steps):
    torch.manual_seed(0)
    model = MambaByteLM(MambaConfig(dim=dim, depth=depth)).to(device)
    caches = model.empty_caches(1)
    token = torch.tensor([65], device=device)
    for _ in range(3):  # warm-up
        logits, caches = model.step(token, caches)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        logits, caches = model.step(token, caches)
        token = logits.argmax(-1)  # the next byte depends on this one, as in generation
    sync()
    return {"what": "decode", "dim": dim, "depth": depth,
            "bytes_per_s": steps / (time.perf_counter() - start)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="append", default=[], help="dim,depth,batch,length")
    parser.add_argument("--decode", action="append", default=[], help="dim,depth")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for spec in args.train:
        dim, depth, batch, length = map(int, spec.split(","))
        print(json.dumps(bench_train(device, dim, depth, batch, length, args.steps)), flush=True)
    for spec in args.decode:
        dim, depth = map(int, spec.split(","))
        print(json.dumps(bench_decode(device, dim, depth, args.steps * 20)), flush=True)


if __name__ == "__main__":
    main()
