"""`quantize(..., method="vlmq", vlmq_record=GRecorder(...))`: the recorder holds the G the run weighted with."""
import pytest

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.g_record import GRecorder
from vlmq_gptqmodel.importance import summarize
from vlmq_gptqmodel.runner import QuantSpec, quantize_model


def test_the_recorded_g_is_the_g_of_the_run_report(tiny_vlm, calib):
    recorder = GRecorder(layers=(1,), projections=("k_proj", "o_proj"))
    model = quantize_model(tiny_vlm("qwen2_vl"), calib, QuantSpec(bits=4, group_size=32), "vlmq", VLMQConfig(),
                           record=recorder)
    assert sorted(recorder.g) == [(1, "k_proj"), (1, "o_proj")]
    assert len(recorder.batches) == len(calib)
    vision = [b.vision for b in recorder.batches]
    report = model.vlmq_report[1]["projections"]
    for projection in ("k_proj", "o_proj"):
        g = recorder.g[(1, projection)]
        assert [tuple(w.shape) for w in g] == [tuple(v.shape) for v in vision]
        # the run's own statistics of its G (over every calibration token) are those of the recorded G
        assert summarize(g, vision) == pytest.approx(report[projection], rel=1e-6)
    assert report["k_proj"]["cv"] > 0.05  # a real, non-uniform gradient G, not G = I


def test_a_recorder_needs_method_vlmq_and_must_be_a_grecorder(tiny_vlm, calib):
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(str(tiny_vlm("qwen2_vl")), QuantizeConfig(bits=4, group_size=32, device="cpu"))
    with pytest.raises(ValueError, match=r"quantize\(vlmq_record=...\) needs method='vlmq'"):
        model.quantize(calib, vlmq_record=GRecorder(layers=(1,), projections=("q_proj",)))
    with pytest.raises(TypeError, match="GRecorder"):
        model.quantize(calib, method="vlmq", vlmq_record={"layers": (1,)})


def test_inspect_maps_qwen3_vl_tokens_onto_its_32_px_patch_grid(tiny_vlm):
    """Qwen3-VL merges 32 px patches (Qwen2-VL 28 px): the 128 px test image is 4 x 4 vision tokens."""
    from vlmq_gptqmodel.inspect_g import conversation, run_and_capture
    from vlmq_gptqmodel.synth.world import make_samples

    sample = make_samples("calib", 1, seed=0, image_size=128)[0]
    g = run_and_capture(tiny_vlm("qwen3_vl"), conversation(sample.image, "describe the image .", sample.caption),
                        QuantSpec(bits=4, group_size=32), VLMQConfig(), 1, "k_proj")
    assert g.grid == (4, 4) and len(g.vision) == 16 and g.policy == "gradient"
    assert [t for t, _ in g.text][g.image_position - 1:g.image_position + 2] == ["<|vision_start|>", "<|vision_end|>",
                                                                                  "describe"]
    assert max(g.vision) > 1.5 * min(g.vision)
