#!/usr/bin/env python3
"""Writes the golden fixtures for the TypeScript tests into tests/reference/fixtures/.

Regenerate (from the repo root; needs torch and numpy, CPU is enough, ~seconds):

    python3 tests/reference/make_fixtures.py

For each config in CONFIGS it writes
  {name}.model.safetensors   float32 weights, mamba_ssm names; __metadata__ {"format":
                             "mambabyte", "config": JSON of the MambaConfig fields}
  {name}.golden.safetensors  tokens (U8, (B, L+1): inputs tokens[:, :L], targets tokens[:, 1:]),
                             logits (F32, (B, L, 256)), loss (F32, (1), mean CE in nats),
                             grad.<param> (F32, gradient of that loss), train_losses (F32, (5):
                             loss BEFORE each AdamW step), train_grad_norms (F32, (5): global
                             grad norm before clipping, per step), decode_tokens (U8, (B, 32)),
                             decode_logits (F32, (B, 32, 256): step() one byte at a time from an
                             empty cache); __metadata__ {"optimizer": JSON, "config": JSON}

Everything is computed in float64 from weights that are exactly representable in float32, then
stored as float32. The script asserts (and prints) that the parallel and sequential scans give
the same logits and gradients, that PScan passes torch.autograd.gradcheck for several lengths,
that recurrent decode equals the full forward pass, and that the files read back exactly.
"""

import copy
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mambabyte_ref import (  # noqa: E402
    VOCAB_SIZE,
    MambaByteLM,
    MambaConfig,
    decays,
    load_safetensors,
    pscan,
    save_safetensors,
)

OUT_DIR = os.path.join(HERE, "fixtures")

CONFIGS = [
    {
        "name": "small_pscan",
        "seed": 1234,
        "B": 2,
        "L": 16,
        "config": dict(dim=16, depth=2, d_state=4, expand_factor=2, d_conv=4, dt_rank="auto",
                       bias=False, conv_bias=True, pscan=True, dt_init="random"),
    },
    {
        "name": "small_seq_bias",
        "seed": 5678,
        "B": 2,
        "L": 13,
        "config": dict(dim=12, depth=2, d_state=3, expand_factor=2, d_conv=3, dt_rank=2,
                       bias=True, conv_bias=True, pscan=False, dt_init="constant"),
    },
]

OPTIMIZER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
             "clip": 1.0}
TRAIN_STEPS = 5
DECODE_LEN = 32
TOL = 1e-9
MAX_TOTAL_BYTES = 2 * 1024 * 1024

TEXT = (b"MambaByte: token-free selective state space model. The quick brown fox jumps over "
        b"the lazy dog 0123456789 {\"a\": [1, 2]}\n")


def rel_err(a, b):
    """max |a - b| / max |b| (absolute when b is all zeros)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def make_model(spec):
    """Seed init (float32, torch.manual_seed), then seeded perturbations, rounded to float32."""
    torch.manual_seed(spec["seed"])
    model = MambaByteLM(MambaConfig(**spec["config"]))
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".A_log"):
                p.add_(0.1 * noise)
            elif name.endswith(".D"):
                p.add_(0.2 * noise)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.add_(0.2 * noise)
            elif name.endswith("dt_proj.bias"):
                p.add_(0.2 * noise)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():  # the float64 weights are exactly the stored float32 ones
            p.copy_(p.float().double())
    return model


def make_tokens(gen, B, T):
    """(B, T) uint8: row 0 starts with ASCII text then random bytes, other rows mix random
    bytes with a text span at a random offset."""
    toks = torch.randint(0, 256, (B, T), generator=gen, dtype=torch.int64)
    text = torch.tensor(list(TEXT), dtype=torch.int64)
    for b in range(B):
        n = T // 2 if b == 0 else T // 3
        start = 0 if b == 0 else int(torch.randint(0, T - n + 1, (1,), generator=gen))
        off = int(torch.randint(0, len(TEXT) - n, (1,), generator=gen))
        toks[b, start : start + n] = text[off : off + n]
    return toks.to(torch.uint8)


def loss_and_grads(model, tokens):
    model.zero_grad(set_to_none=True)
    inputs = tokens[:, :-1].long()
    targets = tokens[:, 1:].long()
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return logits.detach(), loss.detach(), grads


def train_losses(model, tokens):
    model = copy.deepcopy(model)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": OPTIMIZER["weight_decay"]},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=OPTIMIZER["lr"],
                            betas=(OPTIMIZER["beta1"], OPTIMIZER["beta2"]),
                            eps=OPTIMIZER["eps"], foreach=False)
    inputs = tokens[:, :-1].long()
    targets = tokens[:, 1:].long()
    losses, norms = [], []
    for _ in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))
        losses.append(loss.item())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER["clip"])
        norms.append(float(norm))
        opt.step()
    return losses, norms


@torch.no_grad()
def decode(model, tokens):
    caches = model.empty_caches(tokens.size(0))
    out = []
    for t in range(tokens.size(1)):
        logits, caches = model.step(tokens[:, t].long(), caches)
        out.append(logits)
    return torch.stack(out, dim=1)


def check_pscan_gradcheck():
    worst = 0.0
    for L in (1, 2, 3, 4, 5, 7, 8, 13, 16, 17):
        g = torch.Generator().manual_seed(100 + L)
        A = torch.rand(2, L, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
        X = torch.randn(2, L, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
        if not torch.autograd.gradcheck(pscan, (A, X), eps=1e-6, atol=1e-6, rtol=1e-5):
            raise AssertionError(f"pscan gradcheck failed at L={L}")
        H = torch.zeros(2, 3, 2, dtype=torch.float64)
        ref = []
        for t in range(L):
            H = A[:, t] * H + X[:, t]
            ref.append(H)
        err = rel_err(pscan(A, X).detach(), torch.stack(ref, 1).detach())
        worst = max(worst, err)
    print(f"pscan vs loop (L=1..17), max rel err {worst:.3e}; gradcheck ok")
    if worst > TOL:
        raise AssertionError(f"pscan forward differs from the loop: {worst}")


def build(spec):
    name, B, L = spec["name"], spec["B"], spec["L"]
    model = make_model(spec)
    config = model.config
    gen = torch.Generator().manual_seed(spec["seed"] + 2)
    tokens = make_tokens(gen, B, L + 1)
    decode_tokens = make_tokens(gen, B, DECODE_LEN)

    # pscan vs sequential on the same weights
    mode = config.pscan
    config.pscan = True
    logits_p, loss_p, grads_p = loss_and_grads(model, tokens)
    config.pscan = False
    logits_s, loss_s, grads_s = loss_and_grads(model, tokens)
    config.pscan = mode
    e_logits = rel_err(logits_p, logits_s)
    e_loss = rel_err(loss_p, loss_s)
    e_grads = max(rel_err(grads_p[n], grads_s[n]) for n in grads_s)
    print(f"[{name}] pscan vs seq: logits {e_logits:.3e}, loss {e_loss:.3e}, "
          f"grads {e_grads:.3e} (max over params)")
    if max(e_logits, e_loss, e_grads) > TOL:
        raise AssertionError(f"[{name}] pscan and sequential scans disagree")

    logits, loss, grads = (logits_p, loss_p, grads_p) if mode else (logits_s, loss_s, grads_s)

    # recurrent decode vs full forward
    decode_logits = decode(model, decode_tokens)
    with torch.no_grad():
        full = model(decode_tokens.long())
    e_decode = rel_err(decode_logits, full)
    e_decode_pos = max(rel_err(decode_logits[:, t], full[:, t]) for t in range(DECODE_LEN))
    print(f"[{name}] decode vs forward: {e_decode:.3e} (worst single position {e_decode_pos:.3e})")
    if max(e_decode, e_decode_pos) > TOL:
        raise AssertionError(f"[{name}] step() decode differs from forward()")

    losses, norms = train_losses(model, tokens)
    print(f"[{name}] loss {loss.item():.6f}; train_losses "
          + ", ".join(f"{x:.6f}" for x in losses)
          + "; grad norms " + ", ".join(f"{x:.4f}" for x in norms))
    if not losses[-1] < losses[0]:
        raise AssertionError(f"[{name}] training did not reduce the loss")

    config_json = json.dumps(config.to_dict())
    weights = {n: p.detach().float() for n, p in model.state_dict().items()}
    model_path = os.path.join(OUT_DIR, f"{name}.model.safetensors")
    save_safetensors(model_path, weights, {"format": "mambabyte", "config": config_json})

    golden = {
        "tokens": tokens,
        "logits": logits.float(),
        "loss": loss.reshape(1).float(),
    }
    for n in weights:
        golden[f"grad.{n}"] = grads[n].float()
    golden["train_losses"] = torch.tensor(losses, dtype=torch.float32)
    golden["train_grad_norms"] = torch.tensor(norms, dtype=torch.float32)
    golden["decode_tokens"] = decode_tokens
    golden["decode_logits"] = decode_logits.float()
    golden_path = os.path.join(OUT_DIR, f"{name}.golden.safetensors")
    save_safetensors(golden_path, golden,
                     {"optimizer": json.dumps(OPTIMIZER), "config": config_json})

    # read back: bytes identical, config round-trips, the reloaded model gives the logits
    for path, tensors in ((model_path, weights), (golden_path, golden)):
        back, meta = load_safetensors(path)
        if set(back) != set(tensors):
            raise AssertionError(f"{path}: names differ on read-back")
        for n, v in tensors.items():
            if not np.array_equal(back[n], v.numpy()) or back[n].dtype != v.numpy().dtype:
                raise AssertionError(f"{path}: {n} differs on read-back")
    back, meta = load_safetensors(model_path)
    re_config = MambaConfig.from_dict(json.loads(meta["config"]))
    if re_config.to_dict() != config.to_dict():
        raise AssertionError(f"{model_path}: config does not round-trip")

    for path in (model_path, golden_path):
        print(f"[{name}] wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


def main():
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    os.makedirs(OUT_DIR, exist_ok=True)
    check_pscan_gradcheck()
    for spec in CONFIGS:
        build(spec)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR))
    print(f"fixtures total {total} bytes")
    if total > MAX_TOTAL_BYTES:
        raise AssertionError(f"fixtures are {total} bytes, over {MAX_TOTAL_BYTES}")
    print("all self-checks passed")


if __name__ == "__main__":
    main()
