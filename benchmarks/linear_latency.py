"""Latency of one quantized linear layer of Qwen2-VL-7B (the paper's Table 11 shapes), in one run:
FP16 F.linear, the VLMQ W2/W3 Triton kernels, humming-kernels 0.1.19 (the route vLLM 0.33 and SGLang 0.5.23
serve 2-4-bit GPTQ through), GPTQModel's TorchLinear, its Triton path (2-bit) and, with --marlin, Marlin
(4-bit, symmetric, as a reference point), all on the same GPU with the same activations. The optional peers (GPTQModel,
humming-kernels) are timed where they import and run, and listed as unavailable (with the reason) otherwise.

Method: CUDA events around one call, after warm-up, with the L2 cache flushed before every
repetition (a write of twice its size) and a short GPU-side spin before the start event, so that the
host has enqueued the call before the GPU reaches it and the events measure GPU time, not Python and
launch latency; median and min over --reps. Printed per case:
microseconds, speedup over FP16 (medians), achieved GB/s over the bytes the format stores (weights
+ scales + zeros, plus activations and output) and its share of the device's peak memory bandwidth,
and at M=1 the share of the format's memory-bound ceiling. Each output is also checked against
x @ dequant(W).T so a broken kernel is never timed as a fast one.

Without a CUDA device nothing is timed: the script says so, runs a small correctness pass of the
kernels in the Triton interpreter, prints the computed (not measured) ceilings and writes nothing.

    python benchmarks/linear_latency.py                      # all shapes, M in {1,4,16,64,256,1024}, 2 and 3 bits
    python benchmarks/linear_latency.py --shapes down --m 1 16 --reps 100
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the correctness pass; must precede importing triton

import torch.nn.functional as F  # noqa: E402
from results_io import RESULTS, write_text

# Qwen2-VL-7B linear layers (in_features, out_features); q/k/v and gate/up fused as served.
TABLE_11 = {"q/k/v": (3584, 4608), "o": (3584, 3584), "gate/up": (3584, 37888), "down": (18944, 3584)}
M_VALUES = (1, 4, 16, 64, 256, 1024)
GROUP_SIZE = 128
FP16_BYTES = 2.0
HOLD_SECONDS = 300e-6  # GPU spin before each timed call: longer than the host needs to enqueue it


def gptq_bytes_per_weight(bits: int, group_size: int) -> float:
    """GPTQ checkpoint bytes per weight: packed code, plus one fp16 scale and one packed zero point per
    group and column (g_idx, K int32 per layer, is negligible)."""
    return bits / 8 + (16 + bits) / 8 / group_size


def ceiling_speedup(bits: int, group_size: int) -> float:
    """Largest possible speedup over FP16 of a memory-bound GEMV that reads the format once."""
    return FP16_BYTES / gptq_bytes_per_weight(bits, group_size)


@dataclass
class Row:
    shape: str
    in_features: int
    out_features: int
    m: int
    bits: int
    method: str
    median_us: Optional[float] = None
    min_us: Optional[float] = None
    speedup_vs_fp16: Optional[float] = None
    gb_per_s: Optional[float] = None
    pct_peak_bandwidth: Optional[float] = None
    pct_of_ceiling: Optional[float] = None
    max_rel_error: Optional[float] = None
    note: str = ""


@dataclass
class Candidate:
    method: str
    run: Optional[Callable[[torch.Tensor], torch.Tensor]]
    weight_bytes: int
    reference_weight: Optional[torch.Tensor] = None  # dequantized W [N, K] the output is checked against
    unavailable: str = ""


def ceilings_table(bits_list) -> str:
    lines = ["format      bytes/weight  max speedup over FP16 at M=1 (computed, not measured)"]
    lines.append(f"FP16        {FP16_BYTES:12.3f}  1.00x")
    for bits in bits_list:
        per_weight = gptq_bytes_per_weight(bits, GROUP_SIZE)
        lines.append(f"W{bits}g{GROUP_SIZE:<7} {per_weight:12.3f}  {ceiling_speedup(bits, GROUP_SIZE):.2f}x")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CPU


def interpreter_check(bits_list) -> bool:
    """Small shapes through the dispatch in the Triton interpreter against the plain-torch reference."""
    from vlmq_gptqmodel.kernels import dispatch, layout, reference
    from vlmq_gptqmodel.kernels.synthetic import synthetic_gptq

    all_ok = True
    for bits in bits_list:
        unpacked = synthetic_gptq(bits, 640, 96, GROUP_SIZE, True, seed=bits, exact_in_half=True)
        weights = layout.repack_for_kernels(unpacked)
        for m in (1, 4, 33):
            x = torch.randn((m, 640), generator=torch.Generator().manual_seed(m)).half()
            out = dispatch.quantized_matmul(x, weights).double()
            expected = reference.linear(x, unpacked)
            error = ((out - expected).abs() / (2.0 ** -10 * expected.abs() + 1e-6)).max().item()
            ok = error <= 1.0
            all_ok &= ok
            print(f"  W{bits}g{GROUP_SIZE} act-order K=640 N=96 M={m:<3} {dispatch.choose_algorithm(m, weights):<14} "
                  f"max error / (1 fp16 ulp) = {error:.2f}  {'PASS' if ok else 'FAIL'}")
    return all_ok


# ----------------------------------------------------------------------------------------------- GPU


def peak_bandwidth(device) -> float:
    """Theoretical DRAM bandwidth in bytes/s from the device's memory clock and bus width (DDR)."""
    props = torch.cuda.get_device_properties(device)
    return props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 * 2


def measured_copy_bandwidth(device) -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write), a practical upper bound."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * (1 << 30) / statistics.median(times)


def time_call(run: Callable[[], object], flush: torch.Tensor, warmup: int, reps: int, hold_cycles: int) -> tuple:
    """(median, min) GPU microseconds of run(), with the L2 cache flushed before every repetition.

    A GPU-side spin (torch.cuda._sleep) is queued between the flush and the start event, so the host
    has enqueued all of run()'s kernels before the GPU reaches them: the events then measure GPU time,
    not Python and launch latency (which CUDA graphs remove in a serving stack)."""
    for _ in range(warmup):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        flush.zero_()
        torch.cuda._sleep(hold_cycles)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times), min(times)


def gptqmodel_layer(cls, unpacked, device, **kwargs):
    """A GPTQModel quantized linear of class `cls` holding `unpacked` (true zero points, as loaded)."""
    from vlmq_gptqmodel.kernels.layout import pack_gptq

    k, n = unpacked.codes.shape
    module = cls(bits=unpacked.bits, group_size=unpacked.group_size, desc_act=False, in_features=k, out_features=n,
                 bias=False, pack_dtype=torch.int32, **kwargs)
    for name, tensor in pack_gptq(unpacked).items():
        target = getattr(module, name)
        target.data = tensor.to(device=device, dtype=torch.float16 if name == "scales" else tensor.dtype)
    module.to(device)
    module.post_init()
    return module.eval()


def humming_layer(unpacked, device):
    """humming-kernels' GPTQ layer (vLLM 0.33 / SGLang 0.5.23's 2-4-bit route, engines.py) holding `unpacked`:
    true zero points and static groups, as `vlmq quantize --target vllm` saves them. JIT-compiles on CUDA."""
    from humming.layer import HummingLayer

    from vlmq_gptqmodel.kernels.layout import pack_gptq

    k, n = unpacked.codes.shape
    config = {"quant_method": "gptq", "bits": unpacked.bits, "group_size": unpacked.group_size, "desc_act": False,
              "sym": False}
    layer = HummingLayer(shape_n=n, shape_k=k, weight_config=config, torch_dtype=torch.float16).to(device)
    layer.load_from_tensors({name: tensor.to(device=device, dtype=torch.float16 if name == "scales" else tensor.dtype)
                             for name, tensor in pack_gptq(unpacked).items()})
    layer.transform()
    return layer


# --decode-sweep: GEMV launch configurations timed beside the dispatch's at M <= 16, so that a GPU run picks
# the decode configuration by measurement (the first H200 run found the GEMV at 3-12 % of its ceiling).
SWEEP_BLOCK_N = (64, 128)
SWEEP_STAGES = (1, 3)


def decode_sweep(weights, weight, weight_bytes, device) -> list:
    """Candidates over block_n x split-K (none, the dispatch's at M <= 8 and at 9-16, 4x the first, every K
    block) x pipeline stages."""
    from vlmq_gptqmodel.kernels import dispatch
    from vlmq_gptqmodel.kernels.gemv_splitk import gemv_splitk

    sm_count, arch = dispatch.streaming_multiprocessors(device), dispatch.compute_capability(device)
    autos = [dispatch.decode_config(m, weights.bits, weights.out_features, weights.n_blocks, sm_count, arch)
             for m in (1, 16)]
    splits = sorted({1, *(auto.split_k for auto in autos), min(weights.n_blocks, 4 * autos[0].split_k),
                     weights.n_blocks})
    return [Candidate(f"VLMQ W{weights.bits} gemv bn{block_n} sk{split} st{stages}",
                      lambda x, b=block_n, s=split, st=stages: gemv_splitk(
                          x, weights, None, block_n=b, split_k=s, num_warps=autos[0].num_warps, num_stages=st),
                      weight_bytes, weight)
            for block_n in SWEEP_BLOCK_N for split in splits for stages in SWEEP_STAGES]


def candidates(bits, k, n, device, fp16_weight, include_marlin, sweep=False) -> list:
    """Every method for one shape and width, each with the weight it computes with."""
    from vlmq_gptqmodel.kernels import VLMQQuantLinear, dispatch, layout, reference
    from vlmq_gptqmodel.kernels.synthetic import synthetic_gptq

    unpacked = synthetic_gptq(bits, k, n, GROUP_SIZE, False, seed=bits)
    weight = reference.dequantize(unpacked).to(device)
    found = [Candidate("FP16 F.linear", lambda x: F.linear(x, fp16_weight), fp16_weight.numel() * 2)]
    vlmq = VLMQQuantLinear(layout.repack_for_kernels(unpacked)).to(device)
    vlmq_bytes = vlmq.kernel_weights().nbytes()
    found.append(Candidate(f"VLMQ W{bits} (dispatch)", vlmq, vlmq_bytes, weight))
    if sweep:
        found.extend(decode_sweep(vlmq.kernel_weights(), weight, vlmq_bytes, device))
    for algorithm in ("gemm_tiled", "dequant_matmul"):
        found.append(Candidate(
            f"VLMQ W{bits} {algorithm}",
            lambda x, a=algorithm: dispatch.quantized_matmul(x, vlmq.kernel_weights(), None, algorithm=a),
            vlmq_bytes, weight))
    label = f"humming-kernels W{bits} (vLLM/SGLang)"
    try:
        found.append(Candidate(label, humming_layer(unpacked, device), int(gptq_bytes_per_weight(bits, GROUP_SIZE) * k * n),
                               weight))
    except ImportError as error:  # an optional peer: installed from the registries or .whl/ where it can be
        print(f"humming-kernels is not compared: {error}", file=sys.stderr)
    except Exception as error:  # installed but cannot run here (e.g. no nvcc for its JIT): reported, not faked
        found.append(Candidate(label, None, 0, unavailable=f"unavailable: {type(error).__name__}: {error}"))
    try:
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    except ImportError as error:  # the kernels need only torch and Triton; GPTQModel's peers are optional
        print(f"GPTQModel's kernels are not compared: {error}", file=sys.stderr)
        return found
    builders = [(f"GPTQModel TorchLinear W{bits}", TorchLinear, unpacked, False)]
    if bits == 2:
        from gptqmodel.nn_modules.qlinear.tritonv2 import TritonV2Linear
        builders.append(("GPTQModel TritonV2 W2", TritonV2Linear, unpacked, False))
    if include_marlin:
        from gptqmodel.nn_modules.qlinear.marlin import MarlinLinear
        drawn = synthetic_gptq(4, k, n, GROUP_SIZE, False, seed=4)
        symmetric = layout.GPTQCodes(drawn.codes, torch.full_like(drawn.zeros, 8), drawn.scales, drawn.g_idx, 4,
                                     GROUP_SIZE)
        builders.append(("GPTQModel Marlin W4 (sym, reference)", MarlinLinear, symmetric, True))
    for label, cls, codes, sym in builders:
        weight_bytes = int(gptq_bytes_per_weight(codes.bits, GROUP_SIZE) * k * n)
        try:
            module = gptqmodel_layer(cls, codes, device, sym=sym)
        except Exception as error:  # a GPTQModel kernel that cannot run here is reported, not faked
            reason = f"unavailable: {type(error).__name__}: {error}"
            found.append(Candidate(label, None, weight_bytes, unavailable=reason))
            continue
        found.append(Candidate(label, module, weight_bytes, weight if codes is unpacked else
                               reference.dequantize(codes).to(device)))
    return found


def benchmark_shape(shape, k, n, bits, m_values, device, flush, peak, args, include_marlin) -> list:
    fp16_weight = torch.randn((n, k), device=device, dtype=torch.float16) * 0.02
    rows, fp16_median = [], {}
    for candidate in candidates(bits, k, n, device, fp16_weight, include_marlin, args.decode_sweep):
        for m in m_values:
            row = Row(shape, k, n, m, bits, candidate.method, note=candidate.unavailable)
            rows.append(row)
            if candidate.run is None:
                continue
            if candidate.method.endswith(("gemm_tiled", "dequant_matmul")) and m <= 16:
                row.note = "decode sizes use gemv_splitk"
                continue
            if " gemv " in candidate.method and m > 16:
                row.note = "the GEMV takes M <= 16"
                continue
            x = torch.randn((m, k), device=device, dtype=torch.float16)
            with torch.no_grad():
                try:
                    out = candidate.run(x)
                    row.median_us, row.min_us = time_call(lambda: candidate.run(x), flush, args.warmup, args.reps,
                                                          args.hold_cycles)
                except Exception as error:
                    row.note = f"failed: {type(error).__name__}: {error}"
                    continue
            if candidate.reference_weight is not None:
                expected = x.float() @ candidate.reference_weight.float().t()
                row.max_rel_error = ((out.float() - expected).abs().max() / expected.abs().max()).item()
            if candidate.method == "FP16 F.linear":
                fp16_median[m] = row.median_us
            moved = candidate.weight_bytes + 2 * m * (k + n)
            row.gb_per_s = moved / (row.median_us * 1e-6) / 1e9
            row.pct_peak_bandwidth = 100 * moved / (row.median_us * 1e-6) / peak
            if m in fp16_median:
                row.speedup_vs_fp16 = fp16_median[m] / row.median_us
            if m == 1 and candidate.method.startswith("VLMQ"):
                ceiling_us = gptq_bytes_per_weight(bits, GROUP_SIZE) * k * n / peak * 1e6
                row.pct_of_ceiling = 100 * ceiling_us / row.median_us
    return rows


def format_rows(rows) -> str:
    header = (f"{'shape':<8}{'M':>5}  {'method':<40}{'median µs':>10}{'min µs':>9}{'vs FP16':>9}"
              f"{'GB/s':>8}{'% peak BW':>10}{'% ceiling':>10}{'rel err':>9}  note")
    lines = [header, "-" * len(header)]
    for r in rows:
        def fmt(value, spec):
            return format(value, spec) if value is not None else " " * len(format(0.0, spec))
        lines.append(f"{r.shape:<8}{r.m:>5}  {r.method:<40}{fmt(r.median_us, '10.1f')}{fmt(r.min_us, '9.1f')}"
                     f"{fmt(r.speedup_vs_fp16, '8.2f')}x{fmt(r.gb_per_s, '8.0f')}{fmt(r.pct_peak_bandwidth, '10.1f')}"
                     f"{fmt(r.pct_of_ceiling, '10.1f')}{fmt(r.max_rel_error, '9.1e')}  {r.note}")
    return "\n".join(lines)


def crossover_summary(rows) -> list:
    """Per shape and width: the M values where the fused GEMM beats dequantize + matmul, as measured."""
    lines = []
    for key in sorted({(r.shape, r.bits) for r in rows}):
        fused = {r.m: r.median_us for r in rows if (r.shape, r.bits) == key and r.method.endswith("gemm_tiled")}
        fallback = {r.m: r.median_us for r in rows if (r.shape, r.bits) == key and r.method.endswith("dequant_matmul")}
        wins = [m for m in sorted(fused) if fused[m] and fallback.get(m) and fused[m] <= fallback[m]]
        lines.append(f"{key[0]} W{key[1]}: fused GEMM faster than dequant+matmul at M in {wins or 'none'}")
    return lines


def decode_sweep_summary(rows) -> list:
    """Per shape, width and M <= 16: the fastest GEMV configuration measured against the dispatch's."""
    lines = []
    for key in sorted({(r.shape, r.bits, r.m) for r in rows if " gemv " in r.method and r.median_us}):
        timed = [r for r in rows if (r.shape, r.bits, r.m) == key and r.median_us]
        best = min((r for r in timed if " gemv " in r.method), key=lambda r: r.median_us)
        chosen = next((r for r in timed if r.method.endswith("(dispatch)")), None)
        lines.append(f"{key[0]} W{key[1]} M={key[2]}: fastest {best.method.split(' gemv ')[1]} {best.median_us:.1f} µs"
                     + (f", dispatch {chosen.median_us:.1f} µs" if chosen else ""))
    return lines


def summaries(rows) -> list:
    return crossover_summary(rows) + decode_sweep_summary(rows)


def run_gpu(args) -> None:
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    peak = peak_bandwidth(device)
    flush = torch.empty(2 * props.L2_cache_size // 4 + 1, dtype=torch.float32, device=device)
    args.hold_cycles = int(props.clock_rate * 1e3 * HOLD_SECONDS)  # clock_rate is in kHz
    info = {"device": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "peak_bandwidth_gb_s": peak / 1e9, "copy_bandwidth_gb_s": measured_copy_bandwidth(device) / 1e9,
            "l2_bytes": props.L2_cache_size, "torch": torch.__version__, "warmup": args.warmup, "reps": args.reps,
            "group_size": GROUP_SIZE, "activations": "fp16", "gpu_spin_before_each_call_us": HOLD_SECONDS * 1e6,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"{props.name}: peak DRAM bandwidth {info['peak_bandwidth_gb_s']:.0f} GB/s (from clocks), "
          f"1 GiB copy {info['copy_bandwidth_gb_s']:.0f} GB/s (measured)")
    print(ceilings_table(args.bits))
    rows = []
    for shape in args.shapes:
        k, n = TABLE_11[shape]
        for bits in args.bits:
            shape_rows = benchmark_shape(shape, k, n, bits, args.m, device, flush, peak, args,
                                         include_marlin=args.marlin and bits == args.bits[0])
            print(format_rows(shape_rows), flush=True)
            rows.extend(shape_rows)
            write_results(info, rows, summaries(rows), args, complete=False)  # kept if the run is cut short
    summary = summaries(rows)
    print("\n".join(summary))
    write_results(info, rows, summary, args, complete=True)


def write_results(info, rows, summary, args, complete: bool) -> None:
    """Written after every shape (complete=False: the file says which part ran) and once more at the end."""
    device = re.sub(r"[^A-Za-z0-9.-]+", "_", info["device"])
    stem = f"linear_latency_{device}_{info['date'][:19].replace(':', '')}"
    shapes_done = list(dict.fromkeys(r.shape for r in rows))
    status = "complete" if complete else f"partial: shapes {', '.join(shapes_done)} of {', '.join(args.shapes)}"
    write_text(args.out / f"{stem}.json", json.dumps({"info": info, "status": status, "rows": [asdict(r) for r in rows],
                                                      "crossover": summary}, indent=1))
    write_text(
        args.out / f"{stem}.md",
        f"# Linear-layer latency on {info['device']} ({status})\n\n```\n{json.dumps(info, indent=1)}\n\n"
        f"{ceilings_table(args.bits)}\n\n{format_rows(rows)}\n\n" + "\n".join(summary) + "\n```\n")
    if complete:
        print(f"wrote {args.out / stem}.json and .md")


def parse_args(argv=None):
    from vlmq_gptqmodel.kernels.layout import SUPPORTED_BITS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(TABLE_11), default=list(TABLE_11))
    parser.add_argument("--m", type=int, nargs="+", default=list(M_VALUES))
    parser.add_argument("--bits", type=int, nargs="+", choices=SUPPORTED_BITS, default=[2, 3])  # the paper's W2/W3
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--decode-sweep", action="store_true",
                        help="at M <= 16 also time GEMV launch configurations (block_n, split-K, pipeline stages)")
    parser.add_argument("--marlin", action="store_true",
                        help="also time GPTQModel's Marlin W4 (its CUDA extension JIT-compiles: about 2 minutes on an H200)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if HAS_CUDA:
        run_gpu(args)
        return 0
    print("No CUDA device: nothing is timed and no timings are printed (the kernels need an NVIDIA GPU, sm_80+).")
    print(ceilings_table(args.bits))
    print("Correctness pass of the VLMQ kernels in the Triton interpreter (CPU):")
    return 0 if interpreter_check(args.bits) else 1


if __name__ == "__main__":
    sys.exit(main())
