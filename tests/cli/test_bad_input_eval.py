"""Bad input to `vlmq eval` and to the serving loader: refused with one clear line (issue 20)."""
import json
import shutil

import pytest
import torch

from vlmq_gptqmodel import cli
from vlmq_gptqmodel.errors import BadInput


def test_an_autogptq_style_checkpoint_is_read_as_quantized(gptq_checkpoint, tmp_path):
    from vlmq_gptqmodel.synth.evaluation import is_quantized_checkpoint

    ckpt = tmp_path / "autogptq"
    shutil.copytree(gptq_checkpoint(), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    del config["quantization_config"]  # only quantize_config.json says it is quantized
    (ckpt / "config.json").write_text(json.dumps(config))
    assert (ckpt / "quantize_config.json").is_file() and is_quantized_checkpoint(ckpt)


def test_reference_must_be_the_fp_model_the_checkpoint_came_from(tiny_vlm, gptq_checkpoint, tmp_path):
    from vlmq_gptqmodel.synth.evaluation import check_reference
    from vlmq_gptqmodel.synth.tiny_vlm import save_tiny_vlm

    other = save_tiny_vlm(tmp_path / "other", "qwen2_vl", image_size=112, seed=0, hidden_size=96)
    with pytest.raises(BadInput, match="hidden_size 64 vs 96"):
        check_reference(gptq_checkpoint(), other)
    with pytest.raises(BadInput, match="is a quantized checkpoint"):
        check_reference(gptq_checkpoint(), gptq_checkpoint())
    check_reference(gptq_checkpoint(), tiny_vlm("qwen2_vl"))  # the model it was quantized from


def test_eval_of_a_text_only_model_is_one_line(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "llama")
    assert cli.main(["eval", "--model", str(tmp_path / "llama"), "--n", "1"]) == 2
    assert "'llama' model; vlmq takes the model types" in capsys.readouterr().err


def test_eval_prints_a_small_kl_in_significant_digits():
    from vlmq_gptqmodel.synth.evaluation import EvalResult

    result = EvalResult(kinds=["color"], correct=[True], answer_logprobs=[torch.zeros(1, 2)], mean_kl=4.6e-05)
    assert "4.6e-05" in result.table()


def test_load_quantized_without_cuda_names_the_fix(gptq_checkpoint, monkeypatch):
    from vlmq_gptqmodel.glue.serving import load_quantized

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadInput, match="device='cpu'"):
        load_quantized(gptq_checkpoint())


def test_quantize_help_has_a_flag_for_every_vlmq_config_field():
    from dataclasses import fields

    from vlmq_gptqmodel.config import VLMQConfig

    quantize = cli.build_parser()._subparsers._group_actions[0].choices["quantize"]
    dests = {action.dest for action in quantize._actions}
    renamed = {"seed": "random_seed"}  # --seed picks the calibration subset
    assert {renamed.get(f.name, f.name) for f in fields(VLMQConfig)} <= dests


def test_every_vlmq_flag_reaches_the_config():
    from dataclasses import asdict, fields

    from vlmq_gptqmodel.config import VLMQConfig

    args = cli.build_parser().parse_args(["quantize", "--demo", "--precursor", "gptq", "--importance", "random",
                                          "--granularity", "layer", "--norm", "l2", "--targets", "q_proj,up_proj",
                                          "--layer0", "rtn_probe", "--power", "0.5", "--min-weight", "0.2",
                                          "--random-ratio", "0.25", "--random-factor", "0.1", "--random-seed", "3"])
    got = asdict(cli.vlmq_config(args))
    default = asdict(VLMQConfig())
    changed = {name for name in got if got[name] != default[name]}
    assert changed == {f.name for f in fields(VLMQConfig)} - {"residual", "gradient_at"}  # each flag given arrives
    assert (got["power"], got["targets"], got["seed"]) == (0.5, ("q_proj", "up_proj"), 3)
