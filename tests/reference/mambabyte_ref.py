"""Independent PyTorch reference of MambaByte, used to write the golden fixtures.

This is the seed's model (alxndrTL's "mamba.py": MambaConfig, RMSNorm, the Blelloch PScan with
its hand-written backward, ResidualBlock, MambaBlock with selective_scan / selective_scan_seq,
step / ssm_step decode), reconstructed from the garbled brainstorm text, plus:

  * PScan pads L to the next power of two internally, so any sequence length works;
  * the `.float()` casts of the seed are dropped (its own "TODO remove .float()") so that a
    `model.double()` really computes in float64;
  * `MambaByteLM`: byte embedding (256, dim) -> Mamba layers -> final RMSNorm -> untied
    lm_head Linear(dim, 256, bias=False), with the module names of mamba_ssm's
    MambaLMHeadModel, so the state dict keys are `backbone.embedding.weight`,
    `backbone.layers.{i}.mixer.in_proj.weight`, ..., `backbone.norm_f.weight`, `lm_head.weight`;
  * a tiny dependency-free safetensors reader/writer (numpy only, no `safetensors` package).

Nothing here is imported by the TypeScript code; it exists to produce and check fixtures.
"""

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

# --------------------------------------------------------------------------------------------- #
# safetensors: 8-byte little-endian u64 header length, JSON header, raw little-endian data.
# Header entries: name -> {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to
# the first byte after the header), plus an optional "__metadata__": {str: str}.
# --------------------------------------------------------------------------------------------- #

_ST_READ_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_WRITE_DTYPES = {np.dtype("float32"): "F32", np.dtype("uint8"): "U8"}


def _to_numpy(value):
    """torch.Tensor or array-like -> numpy array (torch is not imported here)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def save_safetensors(path, tensors, metadata=None):
    """Writes {name: float32 / uint8 array or tensor} to `path` atomically (temp + rename).

    Entries are laid out wider dtypes first (stable), so each one is aligned to its item size
    in the data section and there are no gaps between them."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    arrays = [(name, _to_numpy(value)) for name, value in tensors.items()]
    # wider dtypes first (stable): every tensor's data then starts at a multiple of its item
    # size (the data section starts 8-aligned), with no gaps between tensors
    arrays.sort(key=lambda item: -item[1].dtype.itemsize)
    for name, arr in arrays:
        dtype = _ST_WRITE_DTYPES.get(arr.dtype)
        if dtype is None:
            raise TypeError(f"save_safetensors: {name} has dtype {arr.dtype}; only float32/uint8")
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * ((-len(header_bytes)) % 8)  # align the data section to 8 bytes
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for data in chunks:
            f.write(data)
    os.replace(tmp, path)


def load_safetensors(path):
    """Returns ({name: numpy array in native byte order}, metadata {str: str}).

    Reads F64, F32, F16, BF16 (returned as float32), I64, I32, I16, I8, U8, BOOL."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(buf[8 : 8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        raw = buf[base + begin : base + end]
        if len(raw) != end - begin:
            raise ValueError(f"{path}: data of {name} runs past the end of the file")
        dtype = info["dtype"]
        if dtype == "BF16":
            itemsize = 2
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif dtype in _ST_READ_DTYPES:
            np_dtype = _ST_READ_DTYPES[dtype]
            itemsize = np_dtype.itemsize
            arr = np.frombuffer(raw, dtype=np_dtype).astype(np_dtype.newbyteorder("="))
        else:
            raise ValueError(f"{path}: {name} has unsupported dtype {dtype}")
        if len(raw) != count * itemsize:
            raise ValueError(f"{path}: {name} has {len(raw)} bytes, shape {shape} needs "
                             f"{count * itemsize}")
        tensors[name] = arr.reshape(shape).copy()
    return tensors, metadata


# --------------------------------------------------------------------------------------------- #
# The model (everything below needs torch).
# --------------------------------------------------------------------------------------------- #

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

VOCAB_SIZE = 256

CONFIG_FIELDS = (
    "dim", "depth", "dt_rank", "d_state", "expand_factor", "d_conv", "dt_min", "dt_max",
    "dt_init", "dt_scale", "dt_init_floor", "bias", "conv_bias", "pscan",
)


@dataclass
class MambaConfig:
    dim: int  # D
    depth: int
    dt_rank: Union[int, str] = "auto"
    d_state: int = 16  # N in paper/comments
    expand_factor: int = 2  # E in paper/comments
    d_conv: int = 4

    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"  # "random" or "constant"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4

    bias: bool = False
    conv_bias: bool = True

    pscan: bool = True  # use parallel scan mode or sequential mode when training

    def __post_init__(self):
        self.d_inner = self.expand_factor * self.dim  # E*D = ED in comments

        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.dim / 16)

    def to_dict(self):
        """The seed's fields with dt_rank resolved: what checkpoint metadata stores."""
        return {k: getattr(self, k) for k in CONFIG_FIELDS}

    @classmethod
    def from_dict(cls, d):
        """Builds a config from a dict, ignoring keys that are not MambaConfig fields."""
        return cls(**{k: v for k, v in d.items() if k in CONFIG_FIELDS})


def npo2(n):
    """The smallest power of two >= n."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pad_npo2(X):
    """(B, L, D, N) -> (B, npo2(L), D, N), zero padded at the end of L (always a new tensor)."""
    L = X.size(1)
    return F.pad(X, (0, 0, 0, 0, 0, npo2(L) - L))


"""
An implementation of the parallel scan operation in PyTorch (Blelloch version).
This code follows the skeleton proposed by Francois Fleuret in his pscan. However, the keys
differences are :
-it has been written in an iterative way (rather than recursive)
-the backward pass has been rewritten

Please see docs/pscan.ipynb (of mamba.py) for a detailed explanation of what happens here.
Here, L is padded to the next power of two inside forward/backward, so any L works.
"""


class PScan(torch.autograd.Function):
    @staticmethod
    def pscan(A, X):
        # A : (B, D, L, N)
        # X : (B, D, L, N)

        # modifies X in place by doing a parallel scan.
        # more formally, X will be populated by these values :
        # H[t] = A[t] * H[t-1] + X[t] with H[0] = 0
        # which are computed in parallel (2*log2(T) sequential steps (ideally), instead of T
        # sequential steps). L must be a power of two (the callers pad).

        B, D, L, _ = A.size()
        num_steps = int(math.log2(L))

        # up sweep or reduction step
        Aa = A
        Xa = X
        for k in range(num_steps):
            T = 2 * (Xa.size(2) // 2)

            Aa = Aa[:, :, :T].view(B, D, T // 2, 2, -1)
            Xa = Xa[:, :, :T].view(B, D, T // 2, 2, -1)

            Xa[:, :, :, 1].add_(Aa[:, :, :, 1].mul(Xa[:, :, :, 0]))
            Aa[:, :, :, 1].mul_(Aa[:, :, :, 0])

            Aa = Aa[:, :, :, 1]
            Xa = Xa[:, :, :, 1]

        # down sweep
        for k in range(num_steps - 1, -1, -1):
            Aa = A[:, :, 2**k - 1 : L : 2**k]
            Xa = X[:, :, 2**k - 1 : L : 2**k]

            T = 2 * (Xa.size(2) // 2)

            if T < Xa.size(2):
                Xa[:, :, -1].add_(Aa[:, :, -1].mul(Xa[:, :, -2]))
                Aa[:, :, -1].mul_(Aa[:, :, -2])

            Aa = Aa[:, :, :T].view(B, D, T // 2, 2, -1)
            Xa = Xa[:, :, :T].view(B, D, T // 2, 2, -1)

            Xa[:, :, 1:, 0].add_(Aa[:, :, 1:, 0].mul(Xa[:, :, :-1, 1]))
            Aa[:, :, 1:, 0].mul_(Aa[:, :, :-1, 1])

    @staticmethod
    def forward(ctx, A_in, X_in):
        """
        Applies the parallel scan operation, as defined above. Returns a new tensor.

        Args:
            A_in : (B, L, D, N)
            X_in : (B, L, D, N)

        Returns:
            H : (B, L, D, N)
        """

        L = X_in.size(1)

        # clone tensors (in-place ops); padding to a power of two also makes a new tensor
        if L == npo2(L):
            A = A_in.clone()  # (B, L, D, N)
            X = X_in.clone()  # (B, L, D, N)
        else:
            A = pad_npo2(A_in)  # (B, npo2(L), D, N)
            X = pad_npo2(X_in)  # (B, npo2(L), D, N)

        # prepare tensors
        A = A.transpose(2, 1)  # (B, D, npo2(L), N)
        X = X.transpose(2, 1)  # (B, D, npo2(L), N)

        # parallel scan
        PScan.pscan(A, X)

        ctx.save_for_backward(A_in, X)

        return X.transpose(2, 1)[:, :L]

    @staticmethod
    def backward(ctx, grad_output_in):
        """
        Flows the gradient from the output to the input. Returns two new tensors.

        Args:
            ctx : A_in : (B, L, D, N), X : (B, D, npo2(L), N)
            grad_output_in : (B, L, D, N)

        Returns:
            gradA : (B, L, D, N), gradX : (B, L, D, N)
        """

        A_in, X = ctx.saved_tensors
        L = grad_output_in.size(1)

        # grad_output_in will be cloned with flip(); A with cat()
        if L == npo2(L):
            A = A_in
            grad_output = grad_output_in
        else:
            A = pad_npo2(A_in)  # (B, npo2(L), D, N)
            grad_output = pad_npo2(grad_output_in)  # (B, npo2(L), D, N)

        # prepare tensors
        A = A.transpose(2, 1)  # (B, D, npo2(L), N)
        # A'[0] = A[0] (unused: it multiplies H[-1] = 0), A'[s] = A[L-s] for s >= 1
        A = torch.cat((A[:, :, :1], A[:, :, 1:].flip(2)), dim=2)
        grad_output_b = grad_output.transpose(2, 1)

        # reverse parallel scan
        grad_output_b = grad_output_b.flip(2)
        PScan.pscan(A, grad_output_b)
        grad_output_b = grad_output_b.flip(2)

        Q = torch.zeros_like(X)
        Q[:, :, 1:].add_(X[:, :, :-1] * grad_output_b[:, :, 1:])

        return Q.transpose(2, 1)[:, :L], grad_output_b.transpose(2, 1)[:, :L]


pscan = PScan.apply


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()

        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        output = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

        return output


class Mamba(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()

        self.config = config

        self.layers = nn.ModuleList([ResidualBlock(config) for _ in range(config.depth)])
        # self.norm_f = RMSNorm(config.dim)

    def forward(self, x):
        # x : (B, L, D)

        # y : (B, L, D)

        for layer in self.layers:
            x = layer(x)

        # x = self.norm_f(x)

        return x

    def step(self, x, caches):
        # x : (B, L, D)
        # caches : [cache(layer) for all layers], cache : (h, inputs)

        # y : (B, L, D)
        # caches : [cache(layer) for all layers], cache : (h, inputs)

        for i, layer in enumerate(self.layers):
            x, caches[i] = layer.step(x, caches[i])

        return x, caches


class ResidualBlock(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()

        self.mixer = MambaBlock(config)
        self.norm = RMSNorm(config.dim)

    def forward(self, x):
        # x : (B, L, D)

        # output : (B, L, D)

        output = self.mixer(self.norm(x)) + x
        return output

    def step(self, x, cache):
        # x : (B, D)
        # cache : (h, inputs)
        # h : (B, ED, N)
        # inputs: (B, ED, d_conv-1)

        # output : (B, D)
        # cache : (h, inputs)

        output, cache = self.mixer.step(self.norm(x), cache)
        output = output + x
        return output, cache


class MambaBlock(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()

        self.config = config

        # projects block input from D to 2*ED (two branches)
        self.in_proj = nn.Linear(config.dim, 2 * config.d_inner, bias=config.bias)

        self.conv1d = nn.Conv1d(
            in_channels=config.d_inner,
            out_channels=config.d_inner,
            kernel_size=config.d_conv,
            bias=config.conv_bias,
            groups=config.d_inner,
            padding=config.d_conv - 1,
        )

        # projects x to input-dependent Δ, B, C
        self.x_proj = nn.Linear(config.d_inner, config.dt_rank + 2 * config.d_state, bias=False)

        # projects Δ from dt_rank to d_inner
        self.dt_proj = nn.Linear(config.dt_rank, config.d_inner, bias=True)

        # dt initialization
        # dt weights
        dt_init_std = config.dt_rank**-0.5 * config.dt_scale
        if config.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif config.dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError

        # dt bias
        dt = torch.exp(
            torch.rand(config.d_inner) * (math.log(config.dt_max) - math.log(config.dt_min))
            + math.log(config.dt_min)
        ).clamp(min=config.dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        # self.dt_proj.bias._no_reinit = True # initialization would set all Linear.bias to zero,
        # need to mark this one as _no_reinit
        # todo : explain why removed

        # S4D real initialization
        A = torch.arange(1, config.d_state + 1, dtype=torch.float32).repeat(config.d_inner, 1)
        # why store A in log ? to keep A < 0 (cf -torch.exp(...)) ? for gradient stability ?
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(config.d_inner))

        # projects block output from ED back to D
        self.out_proj = nn.Linear(config.d_inner, config.dim, bias=config.bias)

    def forward(self, x):
        # x : (B, L, D)

        # y : (B, L, D)

        _, L, _ = x.shape

        xz = self.in_proj(x)  # (B, L, 2*ED)
        x, z = xz.chunk(2, dim=-1)  # (B, L, ED), (B, L, ED)

        # x branch
        x = x.transpose(1, 2)  # (B, ED, L)
        x = self.conv1d(x)[:, :, :L]  # depthwise convolution over time, with a short filter
        x = x.transpose(1, 2)  # (B, L, ED)

        x = F.silu(x)
        y = self.ssm(x)

        # z branch
        z = F.silu(z)

        output = y * z
        output = self.out_proj(output)  # (B, L, D)

        return output

    def ssm(self, x):
        # x : (B, L, ED)

        # y : (B, L, ED)

        A = -torch.exp(self.A_log)  # (ED, N)   (the seed's .float() removed: float64 works)
        D = self.D

        deltaBC = self.x_proj(x)  # (B, L, dt_rank+2*N)

        delta, B, C = torch.split(
            deltaBC, [self.config.dt_rank, self.config.d_state, self.config.d_state], dim=-1
        )  # (B, L, dt_rank), (B, L, N), (B, L, N)
        delta = F.softplus(self.dt_proj(delta))  # (B, L, ED)

        if self.config.pscan:
            y = self.selective_scan(x, delta, A, B, C, D)
        else:
            y = self.selective_scan_seq(x, delta, A, B, C, D)

        return y

    def selective_scan(self, x, delta, A, B, C, D):
        # x : (B, L, ED)
        # Δ : (B, L, ED)
        # A : (ED, N)
        # B : (B, L, N)
        # C : (B, L, N)
        # D : (ED)

        # y : (B, L, ED)

        deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N)
        deltaB = delta.unsqueeze(-1) * B.unsqueeze(2)  # (B, L, ED, N)

        BX = deltaB * (x.unsqueeze(-1))  # (B, L, ED, N)

        hs = pscan(deltaA, BX)

        # (B, L, ED, N) @ (B, L, N, 1) -> (B, L, ED, 1)
        y = (hs @ C.unsqueeze(-1)).squeeze(3)

        y = y + D * x

        return y

    def selective_scan_seq(self, x, delta, A, B, C, D):
        # x : (B, L, ED)
        # Δ : (B, L, ED)
        # A : (ED, N)
        # B : (B, L, N)
        # C : (B, L, N)
        # D : (ED)

        # y : (B, L, ED)

        _, L, _ = x.shape

        deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N)
        deltaB = delta.unsqueeze(-1) * B.unsqueeze(2)  # (B, L, ED, N)

        BX = deltaB * (x.unsqueeze(-1))  # (B, L, ED, N)

        h = torch.zeros(
            x.size(0), self.config.d_inner, self.config.d_state,
            device=deltaA.device, dtype=deltaA.dtype,
        )  # (B, ED, N)
        hs = []

        for t in range(0, L):
            h = deltaA[:, t] * h + BX[:, t]
            hs.append(h)

        hs = torch.stack(hs, dim=1)  # (B, L, ED, N)

        # (B, L, ED, N) @ (B, L, N, 1) -> (B, L, ED, 1)
        y = (hs @ C.unsqueeze(-1)).squeeze(3)

        y = y + D * x

        return y

    # -------------------------- inference -------------------------- #
    """
    Concerning auto-regressive inference

    The cool part of using Mamba : inference is constant wrt to sequence length
    We just have to keep in cache, for each layer, two things :
    - the hidden state h (which is (B, ED, N)), as you typically would when doing inference
      with a RNN
    - the last d_conv-1 inputs of the layer, to be able to compute the 1D conv which is a
      convolution over the time dimension
      (d_conv is fixed so this doesn't incur a growing cache as we progress on generating the
      sequence) (and d_conv is usually very small, like 4, so we just have to "remember" the
      last 3 inputs)

    Concretely, these two quantities are put inside a cache tuple, and are named h and inputs
    respectively. h is (B, ED, N), and inputs is (B, ED, d_conv-1)
    The MambaBlock.step() receives this cache, and, along with outputing the output, alos
    outputs the updated cache for the next call.

    The cache object is initialized as follows : (None, torch.zeros()).
    When h is None, the selective scan function detects it and start with h=0.
    The torch.zeros() isn't a problem (it's same as just feeding the input, because the conv1d
    is padded)

    As we need one such cache variable per layer, we store a caches object, which is simply a
    list of cache object. (See MambaByteLM.empty_caches)
    """

    def step(self, x, cache):
        # x : (B, D)
        # cache : (h, inputs)
        # h : (B, ED, N)
        # inputs : (B, ED, d_conv-1)

        # y : (B, D)
        # cache : (h, inputs)

        h, inputs = cache

        xz = self.in_proj(x)  # (B, 2*ED)
        x, z = xz.chunk(2, dim=1)  # (B, ED), (B, ED)

        # x branch
        x_cache = x.unsqueeze(2)
        x = self.conv1d(torch.cat([inputs, x_cache], dim=2))[:, :, self.config.d_conv - 1]
        # (B, ED)

        x = F.silu(x)
        y, h = self.ssm_step(x, h)

        # z branch
        z = F.silu(z)

        output = y * z
        output = self.out_proj(output)  # (B, D)

        # prepare cache for next call
        inputs = torch.cat([inputs[:, :, 1:], x_cache], dim=2)  # (B, ED, d_conv-1)
        cache = (h, inputs)

        return output, cache

    def ssm_step(self, x, h):
        # x : (B, ED)
        # h : (B, ED, N)

        # y : (B, ED)
        # h : (B, ED, N)

        # (ED, N) # todo : ne pas le faire tout le temps, puisque c'est indépendant de la timestep
        A = -torch.exp(self.A_log)
        D = self.D

        deltaBC = self.x_proj(x)  # (B, dt_rank+2*N)

        delta, B, C = torch.split(
            deltaBC, [self.config.dt_rank, self.config.d_state, self.config.d_state], dim=-1
        )  # (B, dt_rank), (B, N), (B, N)
        delta = F.softplus(self.dt_proj(delta))  # (B, ED)

        deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, ED, N)
        deltaB = delta.unsqueeze(-1) * B.unsqueeze(1)  # (B, ED, N)

        BX = deltaB * (x.unsqueeze(-1))  # (B, ED, N)

        if h is None:
            h = torch.zeros(
                x.size(0), self.config.d_inner, self.config.d_state,
                device=deltaA.device, dtype=deltaA.dtype,
            )  # (B, ED, N)

        h = deltaA * h + BX  # (B, ED, N)

        # (B, ED, N) @ (B, N, 1) -> (B, ED, 1)
        y = (h @ C.unsqueeze(-1)).squeeze(2)

        y = y + D * x

        return y, h


# --------------------------------------------------------------------------------------------- #
# MambaByte language model with mamba_ssm's MambaLMHeadModel module names.
# --------------------------------------------------------------------------------------------- #


class MambaByteBackbone(Mamba):
    """`backbone`: embedding, layers (the seed's Mamba), norm_f."""

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        self.embedding = nn.Embedding(VOCAB_SIZE, config.dim)  # default init: normal(0, 1)
        self.norm_f = RMSNorm(config.dim)

    def forward(self, tokens):
        # tokens : (B, L) int64 -> (B, L, D)
        return self.norm_f(super().forward(self.embedding(tokens)))

    def step(self, token, caches):
        # token : (B,) int64 -> (B, D)
        x, caches = super().step(self.embedding(token), caches)
        return self.norm_f(x), caches


class MambaByteLM(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaByteBackbone(config)
        self.lm_head = nn.Linear(config.dim, VOCAB_SIZE, bias=False)  # untied

    def forward(self, tokens):
        # tokens : (B, L) int64 -> logits (B, L, 256)
        return self.lm_head(self.backbone(tokens))

    def empty_caches(self, batch):
        p = self.lm_head.weight
        c = self.config
        return [
            (None, torch.zeros(batch, c.d_inner, c.d_conv - 1, dtype=p.dtype, device=p.device))
            for _ in range(c.depth)
        ]

    def step(self, token, caches):
        # token : (B,) int64 -> logits (B, 256), caches
        x, caches = self.backbone.step(token, caches)
        return self.lm_head(x), caches


# Parameters that get weight decay (matrices / kernels); everything else (biases, norms, A_log,
# D) gets none.
_DECAY_RE = re.compile(
    r"^(backbone\.embedding\.weight|lm_head\.weight|"
    r"backbone\.layers\.\d+\.mixer\.(in_proj|conv1d|x_proj|dt_proj|out_proj)\.weight)$"
)


def decays(name):
    return bool(_DECAY_RE.match(name))


# --------------------------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------------------------- #


def infer_config(tensors):
    """Shape-only config (the fields that matter for the forward pass) from mamba_ssm names."""
    emb = tensors["backbone.embedding.weight"]
    dim = int(emb.shape[1])
    depth = 0
    while f"backbone.layers.{depth}.mixer.A_log" in tensors:
        depth += 1
    if depth == 0:
        raise ValueError("infer_config: no backbone.layers.0.mixer.A_log")
    p = "backbone.layers.0.mixer."
    d_inner, d_state = (int(s) for s in tensors[p + "A_log"].shape)
    return MambaConfig(
        dim=dim,
        depth=depth,
        dt_rank=int(tensors[p + "dt_proj.weight"].shape[1]),
        d_state=d_state,
        expand_factor=d_inner // dim,
        d_conv=int(tensors[p + "conv1d.weight"].shape[-1]),
        bias=(p + "in_proj.bias") in tensors,
        conv_bias=(p + "conv1d.bias") in tensors,
    )


def load_lm(path, dtype=torch.float64):
    """Loads a safetensors checkpoint (mamba_ssm names) into a MambaByteLM.

    The config comes from metadata["config"] (JSON of the MambaConfig fields); without it, it
    is inferred from the shapes. Tensors the model does not have (optimizer state, ...) are
    ignored; a missing lm_head.weight is tied to the embedding."""
    tensors, metadata = load_safetensors(path)
    if "config" in metadata:
        config = MambaConfig.from_dict(json.loads(metadata["config"]))
    else:
        config = infer_config(tensors)
    if "lm_head.weight" not in tensors and "backbone.embedding.weight" in tensors:
        tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
    model = MambaByteLM(config).to(dtype)
    wanted = model.state_dict().keys()
    state = {k: torch.from_numpy(np.asarray(tensors[k], dtype=np.float64)).to(dtype)
             for k in wanted if k in tensors}
    model.load_state_dict(state, strict=True)
    return model, metadata
