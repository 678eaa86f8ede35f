"""Faults inside a run: non-finite weights are refused before it, non-finite activations at the first
decoder layer that produces them, and a failure in a GPTQModel worker thread reaches the caller as an
ordinary exception (GPTQModel itself would end the process)."""
import pytest
from safetensors.torch import load_file, save_file

from vlmq_gptqmodel.errors import BadInput, RunFailed


def _copy_with(src, dst, name_part, value):
    """A copy of the tiny model `src` whose tensor containing `name_part` is edited by `value(tensor)`."""
    import shutil

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    key = next(k for k in tensors if name_part in k)
    tensors[key] = value(tensors[key].clone())
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _with_nan(t):
    t.view(-1)[3] = float("nan")
    return t


@pytest.mark.parametrize("method", ["gptq", "vlmq"])
def test_non_finite_weight_is_refused_before_the_run_naming_it(tiny_vlm, calib, quantize, tmp_path, method):
    src = _copy_with(tiny_vlm("qwen2_vl"), tmp_path / "m", "layers.1.self_attn.q_proj.weight", _with_nan)
    with pytest.raises(BadInput, match=r"layers\.1\.self_attn\.q_proj\.weight .*NaN or Inf"):
        quantize(src, calib, method=method)


@pytest.mark.parametrize("method", ["gptq", "vlmq"])
def test_non_finite_activations_are_refused_at_the_first_layer_producing_them(tiny_vlm, calib, quantize, tmp_path,
                                                                                 method):
    # finite weights that overflow: layer 1's MLP input is scaled beyond float range
    src = _copy_with(tiny_vlm("qwen2_vl"), tmp_path / "m", "layers.1.post_attention_layernorm.weight",
                     lambda t: t.fill_(3e38))
    with pytest.raises(RunFailed, match=r"layer(s\.| )1\b"):
        quantize(src, calib, method=method)


def test_a_worker_thread_failure_is_an_ordinary_exception(tiny_vlm, calib, quantize, monkeypatch):
    from gptqmodel.quantization.gptq import GPTQ

    def fail(self, *args, **kwargs):
        raise ValueError("simulated worker failure")

    monkeypatch.setattr(GPTQ, "quantize", fail)
    with pytest.raises(RunFailed, match="simulated worker failure"):
        quantize(tiny_vlm("qwen2_vl"), calib, method="gptq")
