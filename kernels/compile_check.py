"""Compile the kernels for an NVIDIA architecture without a GPU and read static facts off the machine code.

Triton lowers to PTX and Triton's bundled ptxas assembles it, so this runs on any host. It reports,
for the launch configurations dispatch.py uses: registers, spill bytes, whether the packed weights
are read with 128-bit loads, and the SASS instructions in the main loop per weight each thread
handles. These are static counts, not timings: nothing here runs a kernel. Each configuration is
compiled with the inline-PTX pair decode (asm on, VLMQ_KERNELS_ASM=1) and with its pure-Triton twin
(asm off, VLMQ_KERNELS_ASM=0; pair_decode.py).

    python -m vlmq_gptqmodel.kernels.compile_check --arch 90 [--asm on|off|both]
"""
import argparse
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import dispatch, layout
from .dequant import _dequant_kernel
from .gemm_tiled import _gemm_tiled_kernel
from .gemv_splitk import _gemv_splitk_kernel, block_m_for
from .triton_tiles import INTERPRETING

POINTER_TYPES = {"words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*u8", "perm_ptr": "*i32",
                 "bias_ptr": "*fp16"}
ASM_CHOICES = {"on": (True,), "off": (False,), "both": (False, True)}
# Integer arguments Triton specializes as multiples of 16 at run time for the Table-11 shapes.
ALIGNED_INTS = {"N", "K", "stride_xm", "stride_om"}


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: object
    constexprs: dict
    num_warps: int
    num_stages: int
    weights_per_thread_per_block: float
    activation_type: str = "*fp16"
    output_type: str = "*fp16"


# Largest shared memory one block may use (opt-in maximum, bytes): a launch that asks for more fails
# with OutOfResources on the GPU, which measuring on an H200 found (Triton's two-stage pipeline of the tiled GEMM).
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


@dataclass(frozen=True)
class StaticReport:
    variant: str
    arch: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    wide_weight_loads: bool
    loop_instructions: int
    instructions_per_weight: float
    mix: dict


def decode_launch(m: int, bits: int, arch: int) -> "dispatch.DecodeConfig":
    """The GEMV launch the dispatch makes for Qwen2-VL-7B's q/k/v (K 3584, N 4608) on a 132-SM GPU."""
    return dispatch.decode_config(m, bits, out_features=4608, n_blocks=triton.cdiv(3584, layout.BLOCK_ROWS[bits]),
                                  sm_count=132, arch=arch)


def variants(bits: int, group_size: int = 128, act_order: bool = False, asm: bool = False, arch: int = 90) -> list:
    """The launch configurations dispatch.py picks on `arch`, one per M bucket, plus the fallback's dequant."""
    block_rows = layout.BLOCK_ROWS[bits]
    common = dict(BITS=bits, GROUP_SIZE=group_size, HAS_PERM=act_order, HAS_BIAS=False, ASM=asm, UPCAST_DOT=False)
    found = []
    for m, label in ((1, "1-8"), (16, "9-16")):  # block_m_for: 8, 16 rows
        config = decode_launch(m, bits, arch)
        found.append(Variant(
            f"gemv_splitk M={label}", _gemv_splitk_kernel,
            dict(common, ATOMIC_OUT=config.split_k > 1, BLOCK_M=block_m_for(m), BLOCK_N=config.block_n),
            config.num_warps, config.num_stages, block_rows * config.block_n / (32 * config.num_warps)))
    for m, label in ((32, "17-32"), (64, "33-64"), (1024, "65+")):
        config = dispatch.prefill_config(m, arch)
        found.append(Variant(
            f"gemm_tiled M={label}", _gemm_tiled_kernel,
            dict(common, BLOCK_M=config.block_m, BLOCK_N=config.block_n, GROUP_M=8),
            config.num_warps, config.num_stages, block_rows * config.block_n / (32 * config.num_warps)))
    found.append(Variant(
        "dequant (fallback)", _dequant_kernel,
        dict(BITS=bits, GROUP_SIZE=group_size, HAS_PERM=act_order, BLOCK_N=128, ASM=asm), 4, 1, block_rows * 128 / 128))
    return found


def _signature(variant: Variant) -> tuple:
    signature, attrs = {}, {}
    for index, name in enumerate(variant.kernel.arg_names):
        if name in variant.constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = {"x_ptr": variant.activation_type, "out_ptr": variant.output_type}.get(
                name, POINTER_TYPES.get(name))
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name in ALIGNED_INTS:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _run_tool(tool, *args) -> str:
    done = subprocess.run([tool.path, *args], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def _main_loop_mix(sass: str) -> Counter:
    """Opcode counts between the target of the last backward branch and that branch."""
    label_address, instructions, loop = {}, [], None
    pending = []
    for line in sass.splitlines():
        label = re.match(r"^(\.L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        inst = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)[^;]*?(?:`\((\.L_x_\d+)\))?\s*;", line)
        if not inst:
            continue
        address = int(inst.group(1), 16)
        for name in pending:
            label_address[name] = address
        pending = []
        instructions.append((address, inst.group(2)))
        if inst.group(2) == "BRA" and inst.group(3) in label_address and label_address[inst.group(3)] < address:
            loop = (label_address[inst.group(3)], address)
    if loop is None:
        return Counter(op for _, op in instructions)
    return Counter(op for address, op in instructions if loop[0] <= address <= loop[1])


def compile_variant(variant: Variant, arch: int) -> StaticReport:
    if INTERPRETING:
        raise RuntimeError("compile_check needs compiled kernels: run it without TRITON_INTERPRET=1")
    signature, attrs = _signature(variant)
    source = ASTSource(fn=variant.kernel, signature=signature, constexprs=variant.constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    with tempfile.TemporaryDirectory() as folder:
        ptx, cubin = os.path.join(folder, "k.ptx"), os.path.join(folder, "k.cubin")
        with open(ptx, "w") as handle:
            handle.write(compiled.asm["ptx"])
        with open(cubin, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        usage = _run_tool(triton.knobs.nvidia.ptxas, "-v", f"-arch={arch_name}", ptx, "-o", os.path.join(folder, "o"))
        sass = _run_tool(triton.knobs.nvidia.nvdisasm, "-c", cubin)
    mix = _main_loop_mix(sass)
    total = sum(mix.values())
    return StaticReport(
        variant=variant.name, arch=arch,
        registers=int(re.search(r"Used (\d+) registers", usage).group(1)),
        spill_bytes=int(re.search(r"(\d+) bytes spill stores", usage).group(1)),
        shared_bytes=compiled.metadata.shared,
        # cp.async copies (LDGSTS) are not counted: in the staged GEMV the 128-bit ones carry activations
        wide_weight_loads=bool(re.search(r"LDG\.E\.(128|ENL2\.256)", sass)),
        loop_instructions=total,
        instructions_per_weight=total / variant.weights_per_thread_per_block,
        mix=dict(mix.most_common(8)),
    )


def format_report(report: StaticReport) -> str:
    mix = ", ".join(f"{op} {count}" for op, count in report.mix.items())
    limit = SHARED_MEMORY_LIMIT.get(report.arch)  # unknown for other architectures: no verdict
    over = limit is not None and report.shared_bytes > limit
    return (f"sm_{report.arch} {report.variant:<20} regs {report.registers:>3}  spills {report.spill_bytes:>4} B  "
            f"smem {report.shared_bytes / 1024:5.0f} KB{' OVER THE LIMIT' if over else ''}  "
            f"128-bit weight loads {'yes' if report.wide_weight_loads else 'NO '}  "
            f"loop instr/weight/thread {report.instructions_per_weight:5.2f}  [{mix}]")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--bits", type=int, nargs="+", choices=layout.SUPPORTED_BITS, default=list(layout.SUPPORTED_BITS))
    parser.add_argument("--asm", choices=ASM_CHOICES, default="both", help="pair decode: inline PTX, its twin, or both")
    args = parser.parse_args(argv)
    print("Static facts from compiling for the target (no kernel runs; not timings). 'loop instr/weight' counts")
    print("the SASS instructions of one main-loop iteration over the weights one thread handles in it;")
    print("for the tiled GEMM each weight then serves BLOCK_M activation rows.")
    for arch in args.arch:
        for bits in args.bits:
            for asm in ASM_CHOICES[args.asm]:
                print(f"-- {bits}-bit, group 128, asm {'on' if asm else 'off'}")
                for variant in variants(bits, asm=asm, arch=arch):
                    print(format_report(compile_variant(variant, arch)))


if __name__ == "__main__":
    main()
