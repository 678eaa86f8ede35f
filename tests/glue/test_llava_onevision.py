"""LLaVA-OneVision through GPTQModel: the definition registered from glue/llava_onevision.py loads, quantizes
(GPTQ, GPTAQ, VLMQ with both precursors and both norms), saves a standard GPTQ checkpoint that reloads with
GPTQModel.load and generates with an image; G = I reproduces the precursors bit for bit. On a tiny random
model built from a config (SigLIP tower with 28 px tiles and a 2x2 anyres grid, Qwen2 language model)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.config import ATTENTION_PROJECTIONS
from vlmq_gptqmodel.runner import QuantSpec
from vlmq_gptqmodel.synth.world import calibration_conversations

ARCH = "llava_onevision"
BITS, GROUP = 4, 32
# label -> (runner method, VLMQConfig or None)
RUNS = {
    "gptq": ("gptq", None),
    "gptaq": ("gptaq", None),
    "vlmq-gptq-l1": ("vlmq", VLMQConfig(precursor="gptq", norm="l1")),
    "vlmq-gptaq-l2": ("vlmq", VLMQConfig(precursor="gptaq", norm="l2")),
    "constant-gptq": ("vlmq", VLMQConfig(importance="constant", precursor="gptq")),
    "constant-gptaq": ("vlmq", VLMQConfig(importance="constant", precursor="gptaq")),
}


def _quantize(src, calib, method, vlmq=None, **load_kwargs):
    """runner.quantize_model, with extra GPTQModel.load keywords (attn_implementation, offload_to_disk)."""
    from gptqmodel import GPTQModel

    from vlmq_gptqmodel.streams import StreamPlan

    spec = QuantSpec(bits=BITS, group_size=GROUP)
    qcfg = spec.quantize_config(StreamPlan.of(method, vlmq).gptaq_quantizer)
    for key in ("offload_to_disk", "offload_to_disk_path"):
        if key in load_kwargs:
            setattr(qcfg, key, load_kwargs.pop(key))
    model = GPTQModel.load(str(src), qcfg, dtype=spec.torch_dtype(), **load_kwargs)
    kwargs = {"method": "vlmq", "vlmq": vlmq} if vlmq is not None else {}
    model.quantize(calib, batch_size=1, **kwargs)
    return model


@pytest.fixture(scope="module")
def run(tiny_vlm, calib, tmp_path_factory):
    """run(label) -> (quantized model, its saved checkpoint directory), each label quantized once."""
    made = {}

    def get(label):
        if label not in made:
            method, vlmq = RUNS[label]
            model = _quantize(tiny_vlm(ARCH), calib, method, vlmq)
            out = tmp_path_factory.mktemp(label)
            model.save(str(out))
            made[label] = (model, out)
        return made[label]

    return get


def _layer_tensors(out_dir):
    return {k: v for k, v in load_file(str(out_dir / "model.safetensors")).items() if ".layers." in k}


def _runtime_name(checkpoint_key: str) -> str:
    """transformers' save_pretrained layout of the source model -> the runtime names GPTQModel saves."""
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head", "lm_head"),
                     ("vision_tower.vision_model.", "model.vision_tower."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector."), ("image_newline", "model.image_newline")):
        if checkpoint_key.startswith(old):
            return new + checkpoint_key[len(old):]
    raise AssertionError(checkpoint_key)


def _assert_standard_checkpoint(src, out_dir):
    """Only the decoder's linears are packed; the vision tower, projector, image_newline, embeddings, norms
    and lm_head are the source's tensors under their runtime names."""
    saved = load_file(str(out_dir / "model.safetensors"))
    packed = {k.rsplit(".", 1)[0] for k in saved if k.endswith(".qweight")}
    assert packed == {f"model.language_model.layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    source = load_file(str(next(src.glob("*.safetensors"))))
    for key, tensor in source.items():
        name = _runtime_name(key)
        if name.rsplit(".", 1)[0] in packed:
            continue
        assert torch.equal(saved[name].float(), tensor.to(saved[name].dtype).float()), name
    assert "model.image_newline" in saved
    qc = json.loads((out_dir / "quantize_config.json").read_text())
    assert qc["format"] == "gptq" and qc["bits"] == BITS and qc["group_size"] == GROUP
    return qc


def _reload_and_generate(src, out_dir):
    """GPTQModel.load the checkpoint, generate a few tokens for an image question, and compare the next-token
    logits with the FP model's."""
    from gptqmodel import GPTQModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    quant = GPTQModel.load(str(out_dir), device="cpu")
    proc = AutoProcessor.from_pretrained(out_dir)
    sample = calibration_conversations(1, seed=11)[0]
    enc = proc.apply_chat_template([sample[:1]], add_generation_prompt=True, tokenize=True, return_dict=True,
                                   return_tensors="pt")
    assert enc["input_ids"][0].tolist().count(quant.model.config.image_token_index) == 24  # the anyres image
    generated = quant.generate(**enc, max_new_tokens=4, do_sample=False)
    new = generated[0, enc["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 4 and int(new.max()) < len(proc.tokenizer)
    fp = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    for name in ("model.image_newline", "model.vision_tower.embeddings.patch_embedding.weight",
                 "model.multi_modal_projector.linear_2.weight", "lm_head.weight"):  # loaded, not initialized
        ours = quant.model.get_parameter(name)
        assert torch.equal(ours.detach().cpu(), fp.get_parameter(name).detach().to(ours.dtype)), name
    with torch.no_grad():
        ref = fp(**enc).logits[0, -1].float()
        got = quant.model(**enc).logits[0, -1].float()
    assert torch.nn.functional.cosine_similarity(ref, got, dim=0) > 0.9


def test_the_definition_is_registered_with_gptqmodel(tiny_vlm):
    from gptqmodel.models import auto

    from vlmq_gptqmodel.glue.activate import install
    from vlmq_gptqmodel.glue.llava_onevision import LlavaOnevisionQModel, register

    install()
    register()  # idempotent, like install()
    assert auto.MODEL_MAP[ARCH] is LlavaOnevisionQModel and auto.SUPPORTED_MODELS.count(ARCH) == 1
    assert auto.check_and_get_model_definition(str(tiny_vlm(ARCH))) is LlavaOnevisionQModel


@pytest.mark.parametrize("label", ["gptq", "gptaq", "vlmq-gptq-l1", "vlmq-gptaq-l2"])
def test_quantize_save_reload_generate(tiny_vlm, run, label):
    model, out = run(label)
    qc = _assert_standard_checkpoint(tiny_vlm(ARCH), out)
    method, vlmq = RUNS[label]
    if vlmq is not None:
        assert qc["meta"]["vlmq"]["precursor"] == vlmq.precursor and qc["meta"]["vlmq"]["norm"] == vlmq.norm
    _reload_and_generate(tiny_vlm(ARCH), out)


@pytest.mark.parametrize("precursor", ["gptq", "gptaq"])
def test_constant_importance_reproduces_the_precursor_bit_for_bit(run, precursor):
    ref, vlmq = _layer_tensors(run(precursor)[1]), _layer_tensors(run(f"constant-{precursor}")[1])
    assert ref.keys() == vlmq.keys()
    assert [k for k in ref if not torch.equal(ref[k], vlmq[k])] == []


@pytest.mark.parametrize("label,precursor", [("vlmq-gptq-l1", "gptq"), ("vlmq-gptaq-l2", "gptaq")])
def test_gradient_importance_weights_the_image_tokens(run, calib, tiny_vlm, label, precursor):
    from transformers import AutoProcessor

    model, out = run(label)
    report = model.vlmq_report
    assert [r["layer"] for r in report] == [0, 1] and report[0]["policy"].startswith("uniform")
    proc = AutoProcessor.from_pretrained(tiny_vlm(ARCH))
    fed = [proc.apply_chat_template([c], add_generation_prompt=True, tokenize=True, return_dict=True,
                                    return_tensors="pt")["input_ids"] for c in calib]
    image_tokens = sum(int((ids == proc.image_token_id).sum()) for ids in fed)
    for p in ATTENTION_PROJECTIONS:
        stats = report[1]["projections"][p]
        assert stats["vision_tokens"] == image_tokens and stats["tokens"] == sum(ids.numel() for ids in fed)
        assert stats["cv"] > 0.05
    ref = _layer_tensors(run(precursor)[1])
    weighted = _layer_tensors(out)
    assert not torch.equal(ref["model.language_model.layers.1.self_attn.q_proj.qweight"],
                           weighted["model.language_model.layers.1.self_attn.q_proj.qweight"])


def test_eager_attention_hands_vlmq_a_4d_mask_and_g_equal_i_still_reproduces_gptaq(tiny_vlm, calib, packed, tmp_path):
    """With eager attention the first decoder layer gets transformers' [B, 1, S, S] mask (not None, as with
    sdpa): GPTQModel feeds the FP stream's hooks the keep-masked rows [N, C], which VLMQ pairs back."""
    src = tiny_vlm(ARCH)
    ref = _quantize(src, calib, "gptaq", attn_implementation="eager")
    same = _quantize(src, calib, "vlmq", VLMQConfig(importance="constant"), attn_implementation="eager")
    a, b = packed(ref, tmp_path / "ref"), packed(same, tmp_path / "vlmq")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    weighted = _quantize(src, calib[:2], "vlmq", VLMQConfig(), attn_implementation="eager")
    assert weighted.vlmq_report[1]["projections"]["k_proj"]["cv"] > 0.05


@pytest.mark.parametrize("layout", ["save_pretrained", "released"])
def test_lazy_meta_shell_loading_materializes_image_newline_and_finds_every_tensor(tiny_vlm, calib, tmp_path, layout):
    """GPTQModel's default offload_to_disk=True loads a meta shell and reads tensors from the checkpoint on
    demand; the definition's name map finds them in both spellings of the SigLIP tower (transformers 5.23's
    save_pretrained writes `vision_tower.*`, the released llava-hf checkpoints `vision_tower.vision_model.*`)."""
    src = tiny_vlm(ARCH)
    if layout == "released":
        legacy = tmp_path / "released"
        shutil.copytree(src, legacy)
        tensors = load_file(str(legacy / "model.safetensors"))
        tensors = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
        save_file(tensors, str(legacy / "model.safetensors"), metadata={"format": "pt"})
        src = legacy
    model = _quantize(src, calib[:2], "vlmq", VLMQConfig(precursor="gptq"), offload_to_disk=True,
                      offload_to_disk_path=str(tmp_path / "offload"))
    assert model.turtle_model is not None  # the lazy path ran
    out = tmp_path / "q"
    model.save(str(out))
    _assert_standard_checkpoint(src, out)
    _reload_and_generate(src, out)


def test_capture_inputs_keep_their_integer_anyres_tensors(tiny_vlm):
    """GPTQModel's generic capture move unsqueezes every 1-D tensor; the definition hands image_sizes and
    batch_num_images to the model as the processor made them (long, [images, 2] and [batch])."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmq_gptqmodel.glue.llava_onevision import LlavaOnevisionQModel

    src = tiny_vlm(ARCH)
    definition = LlavaOnevisionQModel.__new__(LlavaOnevisionQModel)  # only its capture-input method is used
    torch.nn.Module.__init__(definition)
    definition.model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    example = dict(AutoProcessor.from_pretrained(src).apply_chat_template(
        [calibration_conversations(1, seed=3)[0]], tokenize=True, return_dict=True, return_tensors="pt"))
    assert example["batch_num_images"].shape == (1,)
    moved = definition.move_input_capture_example(example, torch.device("cpu"))
    assert moved["batch_num_images"].shape == (1,) and moved["batch_num_images"].dtype == torch.long
    assert moved["image_sizes"].shape == (1, 2) and moved["image_sizes"].dtype == torch.long
    assert moved["pixel_values"].dtype == torch.float32 and moved["input_ids"].dim() == 2
    with torch.no_grad():
        assert torch.isfinite(definition.model(**moved).logits).all()
