"""Random GPTQ layers for tests and the benchmark (no model needed)."""
import torch

from .layout import GPTQCodes, check_bits


def synthetic_gptq(bits: int, in_features: int, out_features: int, group_size: int, desc_act: bool, *,
                   seed: int = 0, exact_in_half: bool = False, device="cpu") -> GPTQCodes:
    """Uniform random codes and zero points, positive scales, and for desc_act a GPTQ act-order g_idx
    (each group keeps group_size rows, scattered over the input dimension).

    exact_in_half draws scales with 3 significant bits, so that every s * (q - z) is exact in fp16 and
    bf16: then dequantizing into the activation dtype loses nothing and results can be compared tightly.
    """
    check_bits(bits)
    gen = torch.Generator().manual_seed(seed)
    rows_per_group = in_features if group_size == -1 else group_size
    n_groups = -(-in_features // rows_per_group)
    g_idx = torch.arange(in_features) // rows_per_group
    if desc_act:
        g_idx = g_idx[torch.randperm(in_features, generator=gen)]
    codes = torch.randint(0, 1 << bits, (in_features, out_features), generator=gen, dtype=torch.uint8)
    zeros = torch.randint(0, 1 << bits, (n_groups, out_features), generator=gen, dtype=torch.uint8)
    if exact_in_half:
        mantissa = 1 + torch.randint(0, 4, (n_groups, out_features), generator=gen) / 4
        exponent = torch.randint(-9, -5, (n_groups, out_features), generator=gen)
        scales = (mantissa * torch.pow(2.0, exponent)).half()
    else:
        scales = (0.005 + 0.02 * torch.rand((n_groups, out_features), generator=gen)).half()
    return GPTQCodes(codes=codes.to(device), zeros=zeros.to(device), scales=scales.to(device),
                     g_idx=g_idx.to(device), bits=bits, group_size=group_size)
