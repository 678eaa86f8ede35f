"""The synthetic-world yardstick that measures the method: a procedurally generated VQA world (world/),
tiny Qwen-VL builders (tiny_vlm), the trained models shipped in assets/, the evaluation harness
(evaluation, dequantized, compare, stats), the round-to-nearest baseline (rtn_baseline) and the demo.
It uses the method (the rest of vlmq_gptqmodel); nothing outside synth/ imports it, except the `vlmq`
command's `--demo` and `eval`."""
