"""The shipped synthetic-world VLMs and the evaluation built on them.

Each shipped model must load offline, answer the held-out questions well, look at the image to do so, and stay a
sensitive yardstick: 4-bit GPTQ keeps its accuracy close to FP while 2-bit round-to-nearest costs answers.
"""
import json
import os
import socket
from dataclasses import dataclass, replace

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import pytest
import torch
from PIL import Image

from vlmq_gptqmodel.synth import evaluation
from vlmq_gptqmodel.rtn import rtn_quantize_weight
from vlmq_gptqmodel.synth.rtn_baseline import apply_rtn, decoder_linears
from vlmq_gptqmodel.synth.world import Sample, calibration_conversations, user_turn

# A fixed slice of the evaluation split: 40 images, about 200 questions.
N_EVAL = 40
MAX_SHIPPED_BYTES = 40 * 2**20


@dataclass(frozen=True)
class Bar:
    """What a shipped model must show on the N_EVAL images: FP exact match at least `fp_floor`, and at least
    `w2_net_loss` answers lost (net) under W2 g128 round-to-nearest."""

    fp_floor: float
    w2_net_loss: int


# synthvlm: issue 4's bar (it scores 0.941 on these 136 questions and loses 5 at W2 g128)
# synthvlm-recall: 0.933 on these 120 questions, 0.033 over blank images, 16 lost net at W2 g128 (meaning answers
# 0.925 -> 0.65), none at W8
BARS = {"synthvlm": Bar(fp_floor=0.9, w2_net_loss=3), "synthvlm-recall": Bar(fp_floor=0.9, w2_net_loss=10)}


@pytest.fixture(scope="module", params=evaluation.SHIPPED_MODELS)
def shipped(request):
    return request.param


@pytest.fixture(scope="module")
def fp(shipped):
    return evaluation.load_for_eval(evaluation.synthvlm_dir(shipped))  # a missing model fails here, naming the fix


@pytest.fixture(scope="module")
def samples(fp):
    return evaluation.eval_samples(N_EVAL, image_size=evaluation.processor_image_size(fp[1]),
                                   world=evaluation.world_of(fp[0]))


@pytest.fixture(scope="module")
def fp_result(fp, samples):
    return evaluation.evaluate(*fp, samples)


# ---------------------------------------------------------------- scoring math (no model needed)

def test_exact_match_needs_every_answer_token_and_the_end_token():
    vocab = 6
    input_ids = torch.tensor([[0, 1, 2, 3, 4], [9, 9, 1, 2, 5]])  # row 1 is left padded
    logits = torch.full((2, 5, vocab), -5.0)
    # Row 0 answer = last 2 tokens (3, 4): predicted at positions 2 and 3.
    logits[0, 2, 3] = logits[0, 3, 4] = 5.0
    # Row 1 answer = last 2 tokens (2, 5): the first is right, the end token is wrong.
    logits[1, 2, 2] = 5.0
    logits[1, 3, 1] = 5.0
    logprobs, hits = evaluation.answer_logprobs_and_hits(logits, input_ids, [2, 2])
    assert hits == [True, False]
    assert [lp.shape for lp in logprobs] == [(2, vocab), (2, vocab)]
    assert torch.allclose(logprobs[0].exp().sum(-1), torch.ones(2))


def test_mean_kl_is_zero_for_identical_and_matches_the_definition():
    p = torch.tensor([[0.7, 0.2, 0.1]]).log()
    q = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert evaluation.mean_kl([p], [p]) == pytest.approx(0.0, abs=1e-7)
    expected = float((p.exp() * (p - q)).sum())
    assert evaluation.mean_kl([p, p], [q, p]) == pytest.approx(expected / 2)
    with pytest.raises(ValueError, match="same"):
        evaluation.mean_kl([p], [p, p])


# ---------------------------------------------------------------- RTN

def test_rtn_uses_gptqmodels_grid():
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization.quantizer import Quantizer

    torch.manual_seed(0)
    w = torch.randn(24, 256) * 0.05
    w[3, :128] = 0  # an empty group
    w[5, 128:] = w[5, 128:].abs()  # a group without negative weights
    for bits in (2, 3, 4):
        for sym in (False, True):
            quantizer = Quantizer(QuantizeConfig(bits=bits, group_size=128, sym=sym))
            quantizer.configure(perchannel=True)
            expected = []
            for block in w.split(128, dim=1):
                quantizer.find_params(block, weight=True)
                expected.append(quantizer.quantize(block))
            got = rtn_quantize_weight(w, bits, 128, sym=sym)
            assert torch.equal(got, torch.cat(expected, 1)), (bits, sym)
            assert all(len(row.unique()) <= 2**bits for row in got[:, :128])


def test_rtn_rejects_bad_groups():
    with pytest.raises(ValueError, match="divide"):
        rtn_quantize_weight(torch.zeros(4, 100), 4, 64)
    with pytest.raises(ValueError, match="bits"):
        rtn_quantize_weight(torch.zeros(4, 64), 1, 64)


# ---------------------------------------------------------------- the shipped model

def test_every_shipped_model_has_a_bar():
    assert set(BARS) == set(evaluation.SHIPPED_MODELS)


def test_shipped_model_loads_offline_and_is_small(shipped, monkeypatch):
    directory = evaluation.synthvlm_dir(shipped)
    files = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert (directory / "model.safetensors").stat().st_size <= MAX_SHIPPED_BYTES

    def no_network(*args, **kwargs):
        raise AssertionError("loading the shipped model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model, processor = evaluation.load_for_eval(directory)
    config = model.config
    assert config.model_type == "qwen2_vl"
    text = config.text_config
    assert text.hidden_size >= 256 and text.num_hidden_layers >= 4
    # Several group-128 groups per row, and vision tokens outnumbering a question's text tokens.
    assert text.hidden_size // 128 >= 2
    assert (evaluation.processor_image_size(processor) // 28) ** 2 >= 36
    saved = json.loads((directory / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) in ("float16", "bfloat16")


@pytest.mark.slow
def test_fp_accuracy_is_high_and_depends_on_the_image(shipped, fp, samples, fp_result):
    assert fp_result.accuracy >= BARS[shipped].fp_floor, fp_result.table()
    assert min(fp_result.per_kind.values()) >= 0.6, fp_result.table()
    # Same questions over blank backgrounds: a model that ignored the image would not lose accuracy.
    size = samples[0].image.size
    blank = [Sample(Image.new("RGB", size, (220, 220, 220)), s.caption, s.qa, s.scene) for s in samples]
    blind = evaluation.evaluate(*fp, blank)
    assert blind.accuracy < fp_result.accuracy - 0.3, blind.table()


def test_answer_margins_are_positive_exactly_where_the_answer_is_right(fp, samples, fp_result):
    questions = evaluation.questions_of(samples)
    margins = evaluation.answer_margins(fp_result.answer_logprobs, questions, fp[1].tokenizer)
    assert len(margins) == len(questions)
    assert [m > 0 for m in margins] == fp_result.correct
    # scored against another question's answer of the same length, a right answer's outputs get a negative margin
    pairs = [(i, j) for i, a in enumerate(questions) for j, b in enumerate(questions)
             if fp_result.correct[i] and a.qa.answer != b.qa.answer
             and len(a.qa.answer.split()) == len(b.qa.answer.split())][:20]
    assert pairs
    swapped = [evaluation.Question(questions[i].image, replace(questions[i].qa, answer=questions[j].qa.answer))
               for i, j in pairs]
    wrong = evaluation.answer_margins([fp_result.answer_logprobs[i] for i, _ in pairs], swapped, fp[1].tokenizer)
    assert all(m < 0 for m in wrong)


def test_teacher_forced_exact_match_agrees_with_greedy_generation(fp, samples, fp_result):
    model, processor = fp
    questions = evaluation.questions_of(samples[:6])
    for q, hit in zip(questions, fp_result.correct):
        prompt = processor.apply_chat_template([user_turn(q.image, q.qa.question)], tokenize=False,
                                               add_generation_prompt=True)
        enc = processor(text=[prompt], images=[q.image], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=len(q.qa.answer.split()) + 1, do_sample=False)  # + <|im_end|>
        answer = processor.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
        assert (answer == f"{q.qa.answer} <|im_end|>") == hit, (q.qa, answer)


@pytest.mark.slow
def test_rtn_w2_costs_answers_and_w8_does_not(shipped, fp, samples, fp_result):
    model, processor = fp
    w8 = evaluation.evaluate(apply_rtn(model, 8, 128), processor, samples, reference_logits=fp_result)
    w2 = evaluation.evaluate(apply_rtn(model, 2, 128), processor, samples, reference_logits=fp_result)
    assert w8.accuracy >= fp_result.accuracy - 0.02 and w8.mean_kl < 0.01
    # synthvlm loses 5 of these 136 answers at W2 g128 (4 text, 1 position), gains none, and loses none at W8;
    # a model that 2-bit noise cannot hurt (tools/TRAINING-history.md: the lr 1e-3 run) would fail here.
    lost = sum(a and not b for a, b in zip(fp_result.correct, w2.correct))
    gained = sum(b and not a for a, b in zip(fp_result.correct, w2.correct))
    assert lost - gained >= BARS[shipped].w2_net_loss, w2.table()
    assert w2.mean_kl > 1000 * w8.mean_kl
    # apply_rtn copies: the FP model is untouched.
    assert all(len(m.weight.unique()) > 64 for m in list(decoder_linears(model).values())[:3])


@pytest.mark.slow
def test_gptq_w4_stays_close_to_fp(shipped, fp, samples, fp_result, tmp_path):
    from gptqmodel import GPTQModel, QuantizeConfig

    qcfg = QuantizeConfig(bits=4, group_size=128, device="cpu", offload_to_disk=False)
    model = GPTQModel.load(str(evaluation.synthvlm_dir(shipped)), qcfg)
    model.quantize(calibration_conversations(32, image_size=evaluation.processor_image_size(fp[1]),
                                             world=evaluation.world_of(fp[0])), batch_size=1)
    model.save(str(tmp_path / "w4"))
    quantized, processor = evaluation.load_for_eval(tmp_path / "w4")
    w4 = evaluation.evaluate(quantized, processor, samples, reference_logits=fp_result)
    assert w4.accuracy >= fp_result.accuracy - 0.05, w4.table()
    assert 0 < w4.mean_kl < 0.5


def test_eval_command_reports_accuracy_and_zero_kl_against_itself(tiny_vlm, tmp_path, capsys):
    from vlmq_gptqmodel.cli import build_parser

    parser = build_parser()
    out = tmp_path / "eval.json"
    model_dir = str(tiny_vlm("qwen2_vl"))
    args = parser.parse_args(["eval", "--model", model_dir, "--n", "4", "--reference", model_dir, "--json", str(out)])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert summary["questions"] == sum(summary["questions_per_kind"].values()) >= 4
    assert summary["mean_kl"] == pytest.approx(0.0, abs=1e-6)
    assert "overall" in capsys.readouterr().out


def test_missing_shipped_model_is_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(evaluation, "ASSETS", tmp_path / "absent")
    assert not evaluation.has_synthvlm()
    with pytest.raises(FileNotFoundError, match="train_synthvlm.py --export"):
        evaluation.synthvlm_dir()


def test_model_arguments_name_shipped_models_or_directories(tmp_path):
    assert evaluation.resolve_model(None) == evaluation.synthvlm_dir()
    assert evaluation.resolve_model("synthvlm") == evaluation.synthvlm_dir("synthvlm")
    assert evaluation.resolve_model(str(tmp_path)) == tmp_path  # a directory is taken as given
    with pytest.raises(ValueError, match="not a shipped model"):
        evaluation.synthvlm_dir("synthvlm-deep")  # not shipped until it passes the headroom test
