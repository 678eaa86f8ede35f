"""A reader of GPTQ checkpoints that follows humming-kernels 0.1.19's rules, not GPTQModel's.

vLLM 0.33 and SGLang 0.5.23 serve 2/3-bit GPTQ only through humming (engines.py). This file decodes a
saved checkpoint the way humming reads it, so a test can check that an export means, in the engine, the
weights the quantizer produced, without trusting GPTQModel's reader (or this project's kernels/layout.py).
The rules, from humming-kernels 0.1.19's source:
- `humming/schema/gptq.py` `_convert_humming`: `qweight` [K*bits/32, N] and `qzeros` [K/group_size, N*bits/32]
  are transposed and passed on unchanged; `scales` [K/group_size, N] likewise. `g_idx` is never read: input
  k belongs to group k // group_size. With sym=False the zero points are used as stored (true zeros: GPTQModel's
  format "gptq_v2"); with sym=True there are none.
- `include/humming/kernel/pack_weight.cuh` `common_unpack_weight`: along the packed dimension, each run of
  `bits` int32 words holds 32 values; value i starts at bit i*bits of the run (little-endian), and if it
  does not fit in its word, its high bits continue at bit 0 of the next word.
- `humming/schema/humming.py` `convert_symmetric_integer_weight`: a symmetric integer weight is
  centred on 2^(bits-1), i.e. its zero point is 2^(bits-1).
- The dequantized weight is (code - zero) * scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

WORD_BITS = 32
VALUES_PER_RUN = 32  # values in one run of `bits` words


def unpack_runs(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 words [..., W] -> codes [..., W * 32 / bits] (int64), value by value as humming's
    common_unpack_weight does (a last, partial run is read as far as it goes)."""
    count, rest = divmod(words.shape[-1] * WORD_BITS, bits)
    if rest:
        raise ValueError(f"{words.shape[-1]} packed words do not hold a whole number of {bits}-bit values")
    padded = torch.nn.functional.pad(words.to(torch.int64) & 0xFFFFFFFF, (0, -words.shape[-1] % bits))
    runs = padded.reshape(*words.shape[:-1], -1, bits)
    values = []
    for i in range(VALUES_PER_RUN):
        start = i * bits
        word, offset = divmod(start, WORD_BITS)
        low_bits = min(WORD_BITS - offset, bits)
        value = (runs[..., word] >> offset) & ((1 << low_bits) - 1)
        if low_bits < bits:
            value = value | ((runs[..., word + 1] & ((1 << (bits - low_bits)) - 1)) << low_bits)
        values.append(value)
    return torch.stack(values, dim=-1).reshape(*words.shape[:-1], -1)[..., :count]


@dataclass
class DecodedLinear:
    codes: torch.Tensor   # [N, K] int64
    zeros: torch.Tensor   # [N, K / group_size] int64
    scales: torch.Tensor  # [N, K / group_size] as stored (fp16)
    group_size: int

    def weight(self) -> torch.Tensor:
        """The dequantized weight [N, K] in fp32: (code - zero) * scale, group of input k = k // group_size."""
        zeros = self.zeros.repeat_interleave(self.group_size, dim=1)
        scales = self.scales.float().repeat_interleave(self.group_size, dim=1)
        return (self.codes - zeros).float() * scales


def decode_linear(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *, bits: int,
                  group_size: int, sym: bool) -> DecodedLinear:
    """One quantized linear's tensors, as humming reads them."""
    codes = unpack_runs(qweight.t().contiguous(), bits)            # [N, K]
    n, k = codes.shape
    groups = scales.shape[0]
    group_size = k if group_size == -1 else group_size  # -1: one group per output channel
    if group_size * groups != k:
        raise ValueError(f"{groups} groups of {group_size} do not cover {k} inputs")
    if sym:
        zeros = torch.full((n, groups), 1 << (bits - 1), dtype=torch.int64)
    else:
        zeros = unpack_runs(qzeros.contiguous(), bits).t()         # packed along N: [G, N * bits / 32] -> [N, G]
    return DecodedLinear(codes=codes, zeros=zeros, scales=scales.t().contiguous(), group_size=group_size)


def read_checkpoint(checkpoint_dir, quantization_config: dict) -> dict[str, DecodedLinear]:
    """Every quantized linear of a saved checkpoint (module name -> decoded), by the settings the engine reads."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    bits, group_size, sym = quantization_config["bits"], quantization_config["group_size"], quantization_config["sym"]
    names = sorted(key[: -len(".qweight")] for key in tensors if key.endswith(".qweight"))
    return {name: decode_linear(tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"], tensors[f"{name}.scales"],
                                bits=bits, group_size=group_size, sym=sym)
            for name in names}
