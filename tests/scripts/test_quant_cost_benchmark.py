"""benchmarks/quant_cost.py takes LLaVA-OneVision: the ov-7b preset (Qwen2-7B text dimensions) and its
worker quantizing a LLaVA-OneVision model."""
import argparse
import json

import quant_cost

from vlmq_gptqmodel.synth.tiny_vlm import save_tiny_vlm


def test_presets_name_their_arch_and_llava_onevision_7b_text_dims():
    assert quant_cost.preset_arch("2b") == "qwen2_vl"
    assert quant_cost.preset_arch("ov-7b") == "llava_onevision"
    assert quant_cost.language_dims("ov-7b") == dict(hidden_size=3584, intermediate_size=18944,
                                                     num_attention_heads=28, num_key_value_heads=4)
    assert quant_cost.parse_args(["--preset", "ov-7b"]).image_size == 112  # tile side: 336 image tokens
    assert quant_cost.parse_args([]).image_size == 448
    assert quant_cost.image_note(quant_cost.parse_args(["--preset", "ov-7b"])) == "224 px, 112 px tiles"


def test_worker_quantizes_a_llava_onevision_model(tmp_path):
    model = save_tiny_vlm(tmp_path / "model", "llava_onevision", seed=0, image_size=56)
    result = tmp_path / "result.json"
    args = argparse.Namespace(worker="VLMQ(gptq)", model=str(model), result=str(result), bits=4, group_size=32,
                              device="cpu", dtype="float32", samples=2, image_size=56, preset="ov-7b")
    quant_cost.worker(args)
    measured = json.loads(result.read_text())
    # in-process here, so the process's lifetime peak RSS is not this run's (the script gives each run its own
    # process); the two readings come from different kernel counters and need not be ordered
    assert measured["seconds"] > 0 and measured["peak_rss_mib"] > 0 and measured["rss_before_mib"] > 0
