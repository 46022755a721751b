"""Train the PyTorch reference (the seed's model) under the quality protocol and print its
validation bits per byte — the other half of `deno task bench --quality`.

Protocol (the same as the TypeScript side): AdamW (β 0.9/0.95, eps 1e-8, weight decay 0.1 on
matrices and kernels only), linear warmup then cosine decay from lr to min_lr, global-norm
clipping, random training windows of seq_len + 1 bytes from train.bin, and validation over the
fixed windows of val.bin that the TypeScript side uses: `total = min(batch · eval_batches,
len(val) - seq_len)` windows starting at floor(i · room / total).

    python3 tests/reference/train_reference.py --corpus DIR [--steps 500] …   (DIR/train.bin, DIR/val.bin)

Prints one JSON line: {"val_bpb": …, "steps": …, "seconds": …, "final_train_loss": …}.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mambabyte_ref import MambaByteLM, MambaConfig, decays  # noqa: E402


def learning_rate(step, lr, min_lr, warmup, steps):
    """1-based step: linear warmup to lr, then cosine to min_lr at the last step."""
    if step <= warmup:
        return lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def validation_starts(val_len, seq_len, batch, eval_batches):
    room = val_len - seq_len
    total = min(batch * eval_batches, room)
    return [(i * room) // total for i in range(total)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="directory with train.bin and val.bin")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-batches", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    train = torch.from_numpy(np.fromfile(os.path.join(args.corpus, "train.bin"), dtype=np.uint8).astype(np.int64))
    val = torch.from_numpy(np.fromfile(os.path.join(args.corpus, "val.bin"), dtype=np.uint8).astype(np.int64))
    model = MambaByteLM(MambaConfig(dim=args.dim, depth=args.depth, d_state=args.d_state)).to(device)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    L, B = args.seq_len, args.batch_size
    offsets = torch.arange(L + 1)
    generator = torch.Generator().manual_seed(args.seed + 1)

    start = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.min_lr, args.warmup, args.steps)
        starts = torch.randint(0, len(train) - L, (B,), generator=generator)
        windows = train[starts[:, None] + offsets].to(device)
        logits = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    total, count = 0.0, 0
    starts = validation_starts(len(val), L, B, args.eval_batches)
    with torch.no_grad():
        for i in range(0, len(starts), B):
            s = torch.tensor(starts[i:i + B])
            windows = val[s[:, None] + offsets].to(device)
            logits = model(windows[:, :-1])
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 256), windows[:, 1:].reshape(-1), reduction="sum")
            total += losses.item()
            count += windows[:, 1:].numel()
    print(json.dumps({"val_bpb": total / count / math.log(2), "steps": args.steps, "seconds": seconds,
                      "final_train_loss": loss.item()}), flush=True)


if __name__ == "__main__":
    main()
