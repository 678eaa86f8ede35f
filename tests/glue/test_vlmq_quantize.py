"""`quantize(calib, method="vlmq")` end to end on tiny random Qwen-VL models."""
import json

import pytest
import torch

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.config import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, PROJECTIONS



def _assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


@pytest.mark.parametrize("arch,precursor,targets", [
    ("qwen2_vl", "gptq", ATTENTION_PROJECTIONS), ("qwen2_vl", "gptaq", ATTENTION_PROJECTIONS),
    ("qwen2_5_vl", "gptaq", ATTENTION_PROJECTIONS), ("qwen2_vl", "gptaq", PROJECTIONS)])
def test_constant_importance_reproduces_the_precursor_bit_for_bit(tiny_vlm, calib, quantize, packed, tmp_path, arch,
                                                                  precursor, targets):
    src = tiny_vlm(arch)
    ref = quantize(src, calib, bits=3, method=precursor)
    vlmq = quantize(src, calib, bits=3, method="vlmq",
                    vlmq=VLMQConfig(importance="constant", precursor=precursor, targets=targets))
    _assert_same_tensors(packed(ref, tmp_path / "ref"), packed(vlmq, tmp_path / "vlmq"))


@pytest.fixture(scope="module")
def gradient_run(tiny_vlm, calib, quantize, packed, tmp_path_factory):
    """VLMQ (gradient, GPTAQ precursor) and plain GPTAQ on the same model and calibration, saved."""
    src = tiny_vlm("qwen2_vl")
    out = tmp_path_factory.mktemp("gradient_run")
    ref = quantize(src, calib, bits=3, method="gptaq")
    vlmq = quantize(src, calib, bits=3, method="vlmq", vlmq=VLMQConfig())
    report = vlmq.vlmq_report
    return {
        "report": report,
        "ref": packed(ref, out / "gptaq"),
        "vlmq": packed(vlmq, out / "vlmq"),
        "ref_dir": out / "gptaq",
        "vlmq_dir": out / "vlmq",
    }


def test_gradient_importance_is_nonuniform_from_layer_1_and_differs_per_projection(gradient_run):
    report = gradient_run["report"]
    assert [r["layer"] for r in report] == [0, 1]
    assert report[0]["policy"].startswith("uniform")
    later = report[1]
    assert later["policy"] is None
    cvs = {p: later["projections"][p]["cv"] for p in ATTENTION_PROJECTIONS}
    assert all(cv > 0.05 for cv in cvs.values()), cvs
    assert len({round(cv, 4) for cv in cvs.values()}) == 4, cvs


def test_gradient_importance_changes_attention_qweights_of_weighted_layers_only(gradient_run):
    ref, vlmq = gradient_run["ref"], gradient_run["vlmq"]
    layer0 = [k for k in ref if ".layers.0." in k]
    assert all(torch.equal(ref[k], vlmq[k]) for k in layer0)  # G = I at layer 0 under the default policy
    for p in ATTENTION_PROJECTIONS:
        key = f"model.language_model.layers.1.self_attn.{p}.qweight"
        assert not torch.equal(ref[key], vlmq[key]), key


def test_checkpoint_stays_standard_gptq_with_vlmq_settings_in_metadata(gradient_run):
    ref, vlmq = gradient_run["ref"], gradient_run["vlmq"]
    assert {k: (v.shape, v.dtype) for k, v in ref.items()} == {k: (v.shape, v.dtype) for k, v in vlmq.items()}
    qc_ref = json.loads((gradient_run["ref_dir"] / "quantize_config.json").read_text())
    qc = json.loads((gradient_run["vlmq_dir"] / "quantize_config.json").read_text())
    meta = qc.pop("meta")
    qc_ref.pop("meta")
    assert qc == qc_ref
    assert qc["method"] == "gptq" and qc["format"] == "gptq" and qc["bits"] == 3
    assert meta["vlmq"]["importance"] == "gradient" and meta["vlmq"]["precursor"] == "gptaq"
    assert meta["vlmq"]["targets"] == list(ATTENTION_PROJECTIONS)
    assert meta["gptaq"] is not None  # the GPTAQ precursor is what ran


def test_gptq_precursor_leaves_no_gptaq_in_the_saved_config(tiny_vlm, calib, quantize, tmp_path):
    model = quantize(tiny_vlm("qwen2_vl"), calib, bits=4, method="vlmq", vlmq=VLMQConfig(precursor="gptq"))
    model.save(str(tmp_path))
    meta = json.loads((tmp_path / "quantize_config.json").read_text())["meta"]
    assert meta["gptaq"] is None and meta["vlmq"]["precursor"] == "gptq"


def test_targets_restrict_weighting_to_the_named_projections(tiny_vlm, calib, quantize, packed, tmp_path):
    src = tiny_vlm("qwen2_vl")
    all4 = packed(quantize(src, calib, bits=3, method="vlmq", vlmq=VLMQConfig(precursor="gptq")),
                             tmp_path / "all")
    qkv = packed(quantize(src, calib, bits=3, method="vlmq",
                                          vlmq=VLMQConfig(precursor="gptq", targets=("q_proj", "k_proj", "v_proj"))),
                            tmp_path / "qkv")
    key = "model.language_model.layers.1.self_attn.{}.qweight"
    # q/k/v get the same G in both runs (G is computed before anything in the layer is quantized), so
    # o_proj sees the same inputs in both and differs only by being token-weighted or not
    assert torch.equal(all4[key.format("q_proj")], qkv[key.format("q_proj")])
    assert not torch.equal(all4[key.format("o_proj")], qkv[key.format("o_proj")])


def test_mlp_targets_weight_the_mlp_and_leave_the_attention_as_the_precursor(tiny_vlm, calib, quantize, packed, tmp_path):
    src = tiny_vlm("qwen2_vl")
    ref = packed(quantize(src, calib, bits=3, method="gptq"), tmp_path / "gptq")
    model = quantize(src, calib, bits=3, method="vlmq", vlmq=VLMQConfig(precursor="gptq", targets=MLP_PROJECTIONS))
    assert set(model.vlmq_report[1]["projections"]) == set(MLP_PROJECTIONS)
    assert all(s["cv"] > 0.05 for s in model.vlmq_report[1]["projections"].values())
    mine = packed(model, tmp_path / "mlp")
    # layer 0 is uniform (X_hat == X), so layer 1's inputs and its unweighted attention match GPTQ's exactly
    same = [k for k in ref if ".layers.0." in k or (".layers.1.self_attn." in k)]
    assert same and all(torch.equal(ref[k], mine[k]) for k in same)
    for p in MLP_PROJECTIONS:
        key = f"model.language_model.layers.1.mlp.{p}.qweight"
        assert not torch.equal(ref[key], mine[key]), key


def test_all_zero_importance_never_zeroes_a_layer(tiny_vlm, calib, quantize, packed, tmp_path, monkeypatch):
    import vlmq_gptqmodel.layer_importance as li

    monkeypatch.setattr(li, "token_factors", lambda grad, norm: torch.zeros(grad.shape[:-1]))
    src = tiny_vlm("qwen2_vl")
    vlmq = quantize(src, calib, bits=4, method="vlmq", vlmq=VLMQConfig(precursor="gptq"))
    assert "fallback" in vlmq.vlmq_report[1]["policy"]
    # a degenerate G falls back to G = I: exactly the precursor, never a zeroed module
    ref = quantize(src, calib, bits=4)
    _assert_same_tensors(packed(ref, tmp_path / "ref"), packed(vlmq, tmp_path / "vlmq"))


def test_unknown_method_and_stray_vlmq_config_are_refused(tiny_vlm, calib):
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(str(tiny_vlm("qwen2_vl")), QuantizeConfig(bits=4, group_size=32, device="cpu"))
    with pytest.raises(ValueError, match="supported methods are"):
        model.quantize(calib, method="vlmqq")
    with pytest.raises(ValueError, match=r"quantize\(vlmq=...\) needs method='vlmq'"):
        model.quantize(calib, vlmq=VLMQConfig())
    with pytest.raises(ValueError, match=r"quantize\(vlmq_record=...\) needs method='vlmq'"):
        model.quantize(calib, vlmq_record=object())
    with pytest.raises(ValueError, match="batch_size=1"):
        model.quantize(calib, batch_size=2, method="vlmq")
    with pytest.raises(TypeError, match="VLMQConfig"):
        model.quantize(calib, method="vlmq", vlmq={"importance": "gradient"})


def test_precursor_conflict_is_refused(tiny_vlm, calib):
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import GPTAQConfig

    qcfg = QuantizeConfig(bits=4, group_size=32, device="cpu", gptaq=GPTAQConfig())
    model = GPTQModel.load(str(tiny_vlm("qwen2_vl")), qcfg)
    with pytest.raises(ValueError, match="precursor='gptq'"):
        model.quantize(calib, method="vlmq", vlmq=VLMQConfig(precursor="gptq"))


def test_unsupported_architecture_is_named(tmp_path, calib):
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vlmq_gptqmodel.synth.tiny_vlm import build_tokenizer

    tok = build_tokenizer(["hello", "world"])
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = GPTQModel.load(str(tmp_path), QuantizeConfig(bits=4, group_size=32, device="cpu"))
    with pytest.raises(ValueError, match="qwen2_vl.*'qwen2'"):
        model.quantize(["hello world"] * 2, method="vlmq")


def test_rtn_probe_weights_layer_0_through_the_whole_pipeline(tiny_vlm, calib, quantize, packed, tmp_path):
    src = tiny_vlm("qwen2_vl")
    probe = quantize(src, calib, bits=3, method="vlmq", vlmq=VLMQConfig(layer0="rtn_probe", precursor="gptq"))
    assert probe.vlmq_report[0]["policy"].startswith("rtn_probe")
    assert probe.vlmq_report[0]["projections"]["v_proj"]["cv"] > 0.05
    ref = packed(quantize(src, calib, bits=3), tmp_path / "gptq")
    mine = packed(probe, tmp_path / "probe")
    key = "model.language_model.layers.0.self_attn.v_proj.qweight"
    assert not torch.equal(ref[key], mine[key])


@pytest.mark.parametrize("cfg", [
    VLMQConfig(importance="attention"),
    VLMQConfig(importance="random", random_ratio=0.5, random_factor=0.05),
    VLMQConfig(importance="modality"),
    VLMQConfig(granularity="layer", norm="l2", targets=("q_proj", "k_proj", "v_proj")),
], ids=["attention", "random", "modality", "layerwise-l2-qkv"])
def test_ablation_settings_run_end_to_end(tiny_vlm, calib, quantize, cfg):
    model = quantize(tiny_vlm("qwen2_vl"), calib, bits=3, method="vlmq", vlmq=cfg)
    report = model.vlmq_report[1]
    assert set(report["projections"]) == set(cfg.targets)
    assert all(s["min"] > 0 and s["cv"] > 0 for s in report["projections"].values())


def test_gptqmodel_default_disk_offload_gives_the_same_checkpoint(tiny_vlm, calib, tmp_path):
    """GPTQModel's default offload_to_disk=True materializes layers lazily inside its loop; the block
    copy must see the real weights there too."""
    from gptqmodel import GPTQModel, QuantizeConfig
    from safetensors.torch import load_file

    for offload in (True, False):
        model = GPTQModel.load(str(tiny_vlm("qwen2_vl")), QuantizeConfig(bits=3, group_size=32, offload_to_disk=offload))
        model.quantize(calib, method="vlmq", vlmq=VLMQConfig())
        model.save(str(tmp_path / str(offload)))
    a, b = (load_file(str(tmp_path / str(o) / "model.safetensors")) for o in (True, False))
    _assert_same_tensors({k: v for k, v in a.items() if ".layers." in k}, {k: v for k, v in b.items() if ".layers." in k})


def test_uniform_residual_changes_only_the_weighted_gptaq_projections(tiny_vlm, calib, quantize, packed, tmp_path):
    src = tiny_vlm("qwen2_vl")
    weighted = packed(quantize(src, calib, bits=3, method="vlmq", vlmq=VLMQConfig(precursor="gptaq")),
                      tmp_path / "weighted")
    uniform = packed(quantize(src, calib, bits=3, method="vlmq",
                              vlmq=VLMQConfig(precursor="gptaq", residual="uniform")), tmp_path / "uniform")
    key = "model.language_model.layers.{}.self_attn.{}.qweight"
    # layer 0 has no upstream error (X_fp == X): its asymmetric term is zero either way
    assert torch.equal(weighted[key.format(0, "q_proj")], uniform[key.format(0, "q_proj")])
    # from layer 1 on the asymmetric term differs, so the q/k/v qweights do
    assert any(not torch.equal(weighted[key.format(1, p)], uniform[key.format(1, p)])
               for p in ("q_proj", "k_proj", "v_proj"))


def test_attention_only_keeps_every_mlp_linear_in_full_precision(tiny_vlm, calib, tmp_path):
    from safetensors.torch import load_file

    from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir

    src = tiny_vlm("qwen2_vl")
    quantize_to_dir(src, calib, tmp_path, QuantSpec(bits=3, group_size=32, attention_only=True), "vlmq",
                    VLMQConfig(precursor="gptq"))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    quantized = {k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")}
    assert quantized and all(".self_attn." in k for k in quantized)
    assert {k.rsplit(".", 1)[0] for k in quantized} >= {"model.language_model.layers.0.self_attn"}
    source = load_file(str(src / "model.safetensors"))
    mlp = [k for k in tensors if ".language_model.layers." in k and ".mlp." in k]
    original = {k: source[k.replace("model.language_model.", "model.")] for k in mlp}  # the tiny model's key names
    assert mlp and all(k.endswith(".weight") and torch.equal(tensors[k], original[k].to(tensors[k].dtype))
                       for k in mlp)


def test_residual_option_is_validated():
    with pytest.raises(ValueError, match="residual"):
        VLMQConfig(residual="half")
    with pytest.raises(ValueError, match="precursor='gptaq'"):
        VLMQConfig(precursor="gptq", residual="uniform")
