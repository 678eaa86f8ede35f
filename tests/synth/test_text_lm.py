"""The text-LM reference (issue 15): a fixed, disjoint held-out split of the stdlib source; sequential rounding
that puts every weight on its grid, with GPTQ beating RTN on the objective it solves."""
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from vlmq_gptqmodel.rtn import rtn_quantize_weight
from vlmq_gptqmodel.synth import text_lm, tiny_vlm
from vlmq_gptqmodel.synth.headroom import layer_error, participation_ratio


def test_the_held_out_files_are_a_fixed_small_share_of_the_stdlib():
    files = text_lm.stdlib_files()
    assert len(files) > 300 and files == sorted(files)
    assert not any({"test", "tests", "site-packages"} & set(p.parts) for p in files)
    held = [p for p in files if text_lm.is_held_out(p)]
    train_texts, held_texts = text_lm.split_texts(files[:80])
    assert len(train_texts) + len(held_texts) == 80
    assert held_texts == [p.read_text(errors="replace") for p in files[:80] if text_lm.is_held_out(p)]
    assert 0.02 < len(held) / len(files) < 0.1
    assert held == [p for p in text_lm.stdlib_files() if text_lm.is_held_out(p)]


def test_bpe_streams_separate_texts_and_windows_come_from_the_stream():
    tokenizer = text_lm.train_bpe(["def f(x):\n    return x\n"] * 20 + ["class A:\n    pass\n"] * 20, 300)
    ids = text_lm.encode(tokenizer, ["def f(x):", "class A:"])
    eos = tokenizer.token_to_id(text_lm.EOS)
    assert (ids == eos).sum() == 2 and ids[-1] == eos
    assert tokenizer.decode(ids[: int((ids == eos).nonzero()[0])].tolist()) == "def f(x):"
    batch = text_lm.windows(ids, 3, 4, seed=0)
    assert batch.shape == (3, 4) and torch.equal(batch, text_lm.windows(ids, 3, 4, seed=0))
    with pytest.raises(ValueError, match="no window"):
        text_lm.windows(ids, 1, len(ids), seed=0)
    spread = text_lm.spread_windows(torch.arange(100), 10, 4)  # evenly over the whole stream, not its start
    assert spread[:, 0].tolist() == [0, 30, 60, 90]
    assert len(text_lm.spread_windows(torch.arange(100), 10, 50)) == 10  # never more than fit without overlap


def test_frequent_words_are_counted_as_the_tokenizer_splits_and_ordered_stably():
    texts = ["self.x = self.y", "return self.x", "b a"]
    words = text_lm.frequent_words(texts, 4, tiny_vlm.word_pre_tokenizer())
    assert words == [".", "self", "x", "="]  # 3, 3 (a tie: alphabetical), 2, then the first of the 1-count words
    assert text_lm.frequent_words(texts, 100, tiny_vlm.word_pre_tokenizer())[-3:] == ["b", "return", "y"]


def test_a_word_stream_ends_each_text_and_marks_unknown_words():
    tokenizer = tiny_vlm.build_tokenizer(["self", ".", "x"])
    ids = text_lm.word_stream(tokenizer, ["self.x", "self.zzz"], tiny_vlm.PAD_TOKEN)
    self_, dot, x = tokenizer.convert_tokens_to_ids(["self", ".", "x"])
    end, unknown = tokenizer.convert_tokens_to_ids(tiny_vlm.PAD_TOKEN), tokenizer.unk_token_id
    assert ids.tolist() == [self_, dot, x, end, self_, dot, unknown, end]


def tiny_model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return Qwen2ForCausalLM(config).eval()


def test_sequential_rtn_puts_every_weight_on_its_groups_grid():
    model = tiny_model()
    calibration = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    assert text_lm.quantize_sequentially(model, model.model.layers, calibration, "rtn", 2, group_size=16) == []
    for layer in model.model.layers:
        for linear in text_lm.layer_linears(layer).values():
            groups = linear.weight.reshape(linear.weight.shape[0], -1, 16)
            assert max(len(torch.unique(g)) for row in groups for g in row) <= 4
    with pytest.raises(ValueError, match="method"):
        text_lm.quantize_sequentially(model, model.model.layers, calibration, "awq", 2)


def test_reference_gptq_makes_no_tensor_off_its_inputs_device():
    """--device cuda: a tensor made on the CPU inside gptq_reference would fail there; meta tensors catch it here."""
    from vlmq_gptqmodel.synth.headroom import gptq_reference

    meta = torch.device("meta")
    assert gptq_reference(torch.empty(8, 32, device=meta), torch.empty(32, 32, device=meta), 2, 16).device == meta


def test_each_layer_is_solved_on_inputs_through_the_layers_already_rounded():
    calibration = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(3))
    first_only = tiny_model()
    text_lm.quantize_sequentially(first_only, first_only.model.layers[:1], calibration, "gptq", 2, group_size=16)
    after_first = text_lm.input_moments(first_only, first_only.model.layers[1], calibration)
    fp = tiny_model()
    unrounded = text_lm.input_moments(fp, fp.model.layers[1], calibration)
    model = tiny_model()
    rows = {r["linear"]: r for r in text_lm.quantize_sequentially(model, model.model.layers, calibration, "gptq", 2,
                                                                  group_size=16)}
    for name in ("q", "down"):
        width = after_first[name].shape[0]
        assert rows[f"1.{name}"]["participation"] == pytest.approx(participation_ratio(after_first[name]) / width)
        assert rows[f"1.{name}"]["participation"] != pytest.approx(participation_ratio(unrounded[name]) / width)


def test_sequential_gptq_beats_rtn_on_the_inputs_it_solves_for():
    model = tiny_model()
    calibration = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    first = text_lm.layer_linears(model.model.layers[0])
    original = {name: linear.weight.detach().double().clone() for name, linear in first.items()}
    moments = text_lm.input_moments(model, model.model.layers[0], calibration)
    rows = text_lm.quantize_sequentially(model, model.model.layers, calibration, "gptq", 3, group_size=16)
    assert [r["linear"] for r in rows[:7]] == [f"0.{n}" for n in ("q", "k", "v", "o", "gate", "up", "down")]
    assert len(rows) == 14 and all(0 < r["participation"] <= 1 and 0 < r["top_share"] <= 1 for r in rows)
    gptq = sum(layer_error(original[n], first[n].weight.double(), moments[n]) for n in first)
    rtn = sum(layer_error(original[n], rtn_quantize_weight(original[n], 3, 16), moments[n]) for n in first)
    assert gptq < 0.8 * rtn
