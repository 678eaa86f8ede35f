"""How far a quantized model drifts from its full-precision original: per decoder layer and at the output."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from ..families import family_of
from .evaluation import hf_model


def decoder_layers(model):
    """The language model's decoder layers of a transformers VLM or a GPTQModel wrapper."""
    net = hf_model(model)
    return family_of(net.config.model_type).decoder_layers(net)


def layer_output_errors(fp_model, q_model, batches: Sequence[dict]) -> List[float]:
    """Relative error ||h_q - h_fp||^2 / ||h_fp||^2 of every decoder layer's output hidden states,
    summed over the batches. Both models see the same inputs, so the error of layer L includes what
    the quantization of layers < L propagated into it, as in a real deployment."""
    return layer_output_errors_by(fp_model, q_model, batches, lambda batch: {"all": None})["all"]


@torch.no_grad()
def layer_output_errors_by(fp_model, q_model, batches: Sequence[dict], token_sets) -> Dict[str, List[float]]:
    """layer_output_errors over named sets of tokens: token_sets(batch) -> {name: bool mask [B, S] or None
    (every token)}; returns {name: per-layer relative errors}."""
    outputs = {}

    def recorder(tag, index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            outputs[(tag, index)] = hidden.float()
        return hook

    handles = [layer.register_forward_hook(recorder(tag, i))
               for tag, model in (("fp", fp_model), ("q", q_model))
               for i, layer in enumerate(decoder_layers(model))]
    n = len(decoder_layers(fp_model))
    err, ref = {}, {}
    try:
        for batch in batches:
            for model in (fp_model, q_model):
                net = hf_model(model)
                net(**batch.to(net.device))
            for name, mask in token_sets(batch).items():
                err.setdefault(name, torch.zeros(n, dtype=torch.float64))
                ref.setdefault(name, torch.zeros(n, dtype=torch.float64))
                for i in range(n):
                    fp, q = outputs[("fp", i)], outputs[("q", i)]
                    if mask is not None:
                        fp, q = fp[mask.to(fp.device)], q[mask.to(q.device)]
                    err[name][i] += (q - fp).pow(2).sum().double()
                    ref[name][i] += fp.pow(2).sum().double()
    finally:
        for h in handles:
            h.remove()
    return {name: (err[name] / ref[name]).tolist() for name in err}


def top1_agreement(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> float:
    """Share of answer positions where the quantized model's most likely token is the FP model's."""
    ref, cand = torch.cat(list(reference)), torch.cat(list(candidate))
    return float((ref.argmax(-1) == cand.argmax(-1)).float().mean())
