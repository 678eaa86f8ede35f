"""tools/train_synthvlm.py end to end on a tiny model: the curriculum runs through every stage, the export
loads as an fp16 Qwen2-VL, a rerun resumes from the checkpoint instead of starting over, and the loss
only sees the assistant's words."""
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import threading

import pytest
import torch

import train_synthvlm  # tools/ is on pytest's pythonpath (pyproject.toml)

from vlmq_gptqmodel.synth import evaluation, headroom, tiny_vlm  # noqa: E402
from vlmq_gptqmodel.synth.world import CAPTION_PROMPT, FINAL_STAGE, user_turn  # noqa: E402
from vlmq_gptqmodel.synth.world.render import TILE_ATTRIBUTES, tile_labels  # noqa: E402
from vlmq_gptqmodel.synth.world.scene import SceneText  # noqa: E402

TINY = ["--hidden", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--intermediate", "64",
        "--vision-depth", "1", "--vision-hidden", "32", "--vision-heads", "2", "--image-size", "84",
        "--batch-size", "2", "--warmup", "1", "--max-stage-steps", "1", "--eval-every", "1",
        "--final-steps", "1", "--val-samples", "1"]


def test_curriculum_runs_every_stage_exports_and_resumes(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    assert train_synthvlm.main(["--out", str(out), "--export", str(export), *TINY]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stages = [entry["stage"] for entry in log if "stage" in entry]
    assert stages == sorted(stages) and set(stages) == set(range(1, FINAL_STAGE + 1))
    assert all(0 < entry[name] < 15 for entry in log if "stage" in entry
               for name in ("tile_loss", "gather_loss", "read_loss"))
    saved = json.loads((export / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "float16"
    assert json.loads((export / "tokenizer.json").read_text())["padding"] is None  # validation padded
    model, processor = evaluation.load_for_eval(export)
    assert evaluation.processor_image_size(processor) == 84
    steps = torch.load(out / "ckpt.pt", weights_only=False)["step"]

    assert train_synthvlm.main(["--out", str(out), *TINY]) == 0  # already finished: nothing more to train
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == steps


def test_the_final_stages_start_is_kept_so_another_final_stage_can_branch_from_it(tmp_path):
    out, branch = tmp_path / "run", tmp_path / "branch"
    assert train_synthvlm.main(["--out", str(out), *TINY]) == 0
    kept = torch.load(out / "final-stage.pt", weights_only=False)
    finished = torch.load(out / "ckpt.pt", weights_only=False)
    assert kept["stage"] == FINAL_STAGE and kept["step"] == kept["final_start"] == finished["final_start"]
    assert finished["step"] == kept["step"] + 1  # TINY's --final-steps 1

    branch.mkdir()
    shutil.copyfile(out / "final-stage.pt", branch / "ckpt.pt")
    assert train_synthvlm.main(["--out", str(branch), *TINY, "--final-steps", "3"]) == 0
    assert torch.load(branch / "ckpt.pt", weights_only=False)["step"] == kept["step"] + 3
    assert not (branch / "final-stage.pt").exists()  # it began in the final stage: nothing new to keep


def test_deep_preset_sets_its_recipe_and_explicit_flags_win():
    deep = train_synthvlm.parse_args(["--preset", "deep"])
    assert (deep.world, deep.image_size, deep.layers, deep.out) == ("deep", 392, 8, "runs/deep")
    assert train_synthvlm.parse_args(["--preset", "deep", "--layers", "2"]).layers == 2
    plain = train_synthvlm.parse_args([])
    assert (plain.world, plain.image_size, plain.layers) == ("synthvlm", 224, 4)


def test_a_deep_world_model_records_its_world_for_evaluation(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    assert train_synthvlm.main(["--out", str(out), "--export", str(export), "--preset", "deep", *TINY]) == 0
    model, processor = evaluation.load_for_eval(export)
    assert evaluation.world_of(model) == "deep"
    # evaluation then asks the deep world's questions: 3-4 glyph texts
    samples = evaluation.eval_samples(30, image_size=84, world=evaluation.world_of(model))
    assert {len(s.scene.text.glyphs) for s in samples if s.scene.text} == {3, 4}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["args"]["world"] == "deep"


def test_tile_probe_sees_one_vision_token_per_tile_of_every_row():
    """The hooked vision tokens line up with tile_labels: one per tile, rows in batch order."""
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "6"])
    model, processor = train_synthvlm.build_fresh_model(args)
    tokens = train_synthvlm.VisionTokens(model)
    conversations, images, _, _ = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    batch = train_synthvlm.encode_training_batch(processor, conversations, images)
    batch.pop("labels_mask")
    with torch.no_grad():
        model(**batch)
    n_tiles = args.image_size // 28
    assert tokens.tokens.shape == (len(conversations) * n_tiles ** 2, args.hidden)
    per_row = tokens.tokens.reshape(len(conversations), n_tiles ** 2, -1)
    for i, j in itertools.combinations(range(len(conversations)), 2):  # rows of one image share its tokens
        assert torch.allclose(per_row[i], per_row[j]) == (images[i] is images[j])


def test_loss_mask_covers_exactly_the_assistant_answers():
    args = train_synthvlm.parse_args(TINY + ["--out", "unused"])
    _, processor = train_synthvlm.build_fresh_model(args)
    tok = processor.tokenizer
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "what colour is the circle ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "how many squares are there ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
    ]
    ids = tok(processor.apply_chat_template(conversation, tokenize=False), return_tensors="pt")["input_ids"]
    mask = train_synthvlm.assistant_mask(ids, tok)
    assert tok.convert_ids_to_tokens(ids[0][mask[0]].tolist()) == ["red", "<|im_end|>", "two", "<|im_end|>"]


def test_training_rows_are_single_questions_in_the_evaluation_format():
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "40"])
    stream = train_synthvlm.CurriculumStream(args)
    conversations, images, scenes, subjects = stream.batch(FINAL_STAGE, step=0)
    assert len(conversations) == len(images) == len(scenes) == len(subjects) == 40
    assert all((a is b) == (sa is sb) for (a, sa), (b, sb) in itertools.combinations(zip(images, scenes), 2))
    kinds, questions = [], []
    for conversation, image in zip(conversations, images):
        user, assistant = conversation
        question = next(item["text"] for item in user["content"] if item["type"] == "text")
        assert user == user_turn(image, question)  # exactly what evaluation and calibration send
        assert assistant["role"] == "assistant"
        questions.append(question)
        kinds.append("caption" if question == CAPTION_PROMPT else question.split()[0] + " " + question.split()[1])
    # consecutive rows per image, at most ROWS_PER_IMAGE of them, never the same question twice
    per_image = [[q for _, q in group] for _, group in itertools.groupby(zip(images, questions), key=lambda r: id(r[0]))]
    assert len({id(image) for image in images}) == len(per_image)
    assert all(1 <= len(rows) <= train_synthvlm.ROWS_PER_IMAGE for rows in per_image)
    assert all(len(set(rows)) == len(rows) for rows in per_image)
    assert sum(len(rows) == train_synthvlm.ROWS_PER_IMAGE for rows in per_image) > len(per_image) / 2
    assert {"caption", "what colour", "what shape", "where is", "what does"} <= set(kinds)


def test_binding_targets_point_each_answer_word_at_the_tokens_it_needs():
    """Query: the position just before an answer word. gather keys: the question's words naming the object asked
    about; read key: an image token whose tile holds it (or the glyph that word spells). Captions get none."""
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "40"])
    _, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    ids, tok = batch["input_ids"], processor.tokenizer
    image_pad = tok.convert_tokens_to_ids(tiny_vlm.IMAGE_PAD)
    gather, read, copy = train_synthvlm.binding_targets(ids, batch["labels_mask"], rows.subjects, args.image_size, tok)
    assert len(copy) == 0  # no names in this world
    with_subject = [i for i, subject in enumerate(rows.subjects) if subject is not None]
    assert sorted(set(read[:, 0].tolist())) == with_subject and len(with_subject) < len(rows.subjects)
    assert read[:, 3].tolist() == list(range(len(read)))  # one key per query
    attribute = {name: i for i, name in enumerate(TILE_ATTRIBUTES)}
    kinds, tiles = set(), []
    for row, query, key, _ in read.tolist():
        assert batch["labels_mask"][row, query + 1] and ids[row, key] == image_pad
        tile = int((ids[row, :key] == image_pad).sum())
        tiles.append(tile)
        labels = tile_labels(rows.scenes[row], args.image_size)[tile]
        word = tok.convert_ids_to_tokens(int(ids[row, query + 1]))
        subject = rows.subjects[row]
        if isinstance(subject, SceneText):
            kinds.add("text")
            assert TILE_ATTRIBUTES["glyph"][labels[attribute["glyph"]] - 1] == word
        else:
            kinds.add("object")
            assert TILE_ATTRIBUTES["colour"][labels[attribute["colour"]] - 1] == subject.colour
            assert TILE_ATTRIBUTES["shape"][labels[attribute["shape"]] - 1] == subject.shape
    assert kinds == {"text", "object"}
    assert train_synthvlm.read_tiles(ids, read, image_pad).tolist() == tiles  # what the read probe is told
    # gather: exactly the naming words of the question, for every answer word of every object question
    named = {}
    for row, query, key, group in gather.tolist():
        named.setdefault((row, query, group), []).append(tok.convert_ids_to_tokens(int(ids[row, key])))
    assert len({group for _, _, group in named}) == len(named)
    expected = {}
    for row, query, _, _ in read.tolist():
        subject = rows.subjects[row]
        question = rows.conversations[row][0]["content"][-1]["text"].split()
        if not isinstance(subject, SceneText):
            expected[(row, query)] = [w for w in question if w in (subject.colour, subject.shape)]
    assert {(row, query): words for (row, query, _), words in named.items()} == expected
    assert {len(words) for words in expected.values()} == {1, 2}  # colour/shape questions name one, position two


def test_binding_loss_is_minus_log_of_the_attention_on_each_querys_keys():
    targets = torch.tensor([[0, 3, 1, 0], [1, 4, 2, 1], [1, 4, 3, 1]])  # query (1, 4) has two keys
    uniform = torch.full((2, 5, 5), 0.2)
    expected = (torch.log(torch.tensor(5.0)) + torch.log(torch.tensor(2.5))) / 2
    assert torch.isclose(train_synthvlm.binding_loss(uniform.log(), targets), expected)
    focused = torch.zeros(2, 5, 5)
    focused[0, 3, 1] = focused[1, 4, 2] = 0.5
    focused[0, 3, 0] = focused[1, 4, 3] = 0.5
    assert torch.isclose(train_synthvlm.binding_loss(focused.log(), targets), torch.log(torch.tensor(2.0)) / 2)


def test_binding_loss_keeps_its_gradient_when_the_target_weight_underflows():
    """Scores 300 apart: softmax gives the target exactly 0 in float32, so a loss read off the weights would sit at
    its floor with no gradient (a CPU run's read hop did, for its whole first stage); from log-weights it does not."""
    scores = torch.tensor([[[0.0, 300.0, 0.0]]], requires_grad=True)
    assert float(scores.detach().softmax(-1)[0, 0, 0]) == 0.0
    loss = train_synthvlm.binding_loss(scores.log_softmax(-1), torch.tensor([[0, 0, 0, 0]]))
    assert torch.isclose(loss, torch.tensor(300.0) + torch.log1p(torch.exp(torch.tensor(-300.0)) * 2))
    loss.backward()
    assert scores.grad[0, 0, 0] < -0.99 and scores.grad[0, 0, 1] > 0.99


def test_supervised_head_weights_are_the_layers_attention():
    """The hook keeps head 0's log-weights of the chosen layer: their weights sum to one per row, none looks ahead."""
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "2"])
    model, processor = train_synthvlm.build_fresh_model(args)
    head = train_synthvlm.HeadAttention(model, (0, 1))
    rows = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    batch.pop("labels_mask")
    with torch.no_grad():
        model(**batch)
    assert not torch.allclose(head.log_weights[0], head.log_weights[1])
    weights = head.log_weights[1].exp()
    assert weights.shape == (2, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    real = batch["attention_mask"].bool()
    assert torch.allclose(weights.sum(-1)[real], torch.ones(int(real.sum())), atol=1e-5)
    assert float(weights.triu(1)[real].abs().max()) == 0.0  # padding queries aside


def test_patch_embedding_by_matmul_is_the_convolution():
    args = train_synthvlm.parse_args(TINY + ["--out", "unused"])
    model, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    patches = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)["pixel_values"]
    embed = model.model.visual.patch_embed
    with torch.no_grad():
        convolved = embed(patches)
        train_synthvlm.embed_patches_by_matmul(model)
        assert torch.allclose(embed(patches), convolved, atol=1e-5)
        embed.proj.weight.mul_(2)  # the matmul reads the weight at call time (resumes, dtype round trips)
        assert torch.allclose(embed(patches), 2 * convolved, atol=1e-5)


@pytest.mark.skipif(not any(map(shutil.which, train_synthvlm.CPP_COMPILERS)), reason="torch.compile needs a C++ compiler")
def test_compiled_mlps_keep_the_loss_its_gradients_and_the_weight_names():
    args = train_synthvlm.parse_args([*TINY, "--out", "unused", "--batch-size", "3"])
    model, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    names = list(model.state_dict())
    mlps = [block.mlp for block in model.model.visual.blocks] + [l.mlp for l in model.model.language_model.layers]

    def loss_and_grads():
        loss = train_synthvlm.training_loss(model, dict(batch))
        return loss, torch.autograd.grad(loss, [p for mlp in mlps for p in mlp.parameters()])

    eager, eager_grads = loss_and_grads()
    train_synthvlm.compile_mlps(model, torch.device("cpu"))
    assert all(mlp._compiled_call_impl is not None for mlp in mlps)  # every MLP, vision and language
    compiled, compiled_grads = loss_and_grads()
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert all(torch.allclose(c, e, atol=1e-5) for c, e in zip(compiled_grads, eager_grads))
    assert list(model.state_dict()) == names  # checkpoints and exports keep loading


def test_compiling_without_a_cpp_compiler_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train_synthvlm.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="C\\+\\+ compiler"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, "--compile"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--eval-every", "--report-every"])
def test_validation_intervals_below_one_step_are_refused_before_training(tmp_path, flag):
    with pytest.raises(SystemExit, match=f"{flag} 0"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, flag, "0"])
    assert not (tmp_path / "run").exists()


def test_between_full_reports_validation_scores_the_current_stage_alone_with_the_same_result():
    args = train_synthvlm.parse_args([*TINY, "--out", "unused", "--val-samples", "2"])
    model, processor = train_synthvlm.build_fresh_model(args)
    full = train_synthvlm.validate(model, processor, args, stage=1)
    lean = train_synthvlm.validate(model, processor, args, stage=1, full=False)
    assert set(full) == {"stage1", f"stage{FINAL_STAGE}"} and "blank_accuracy" in full["stage1"]
    assert set(lean) == {"stage1"} and "blank_accuracy" not in lean["stage1"]
    assert lean["stage1"]["accuracy"] == full["stage1"]["accuracy"]  # what advancing reads is unchanged


def test_only_the_layers_whose_weights_are_kept_run_the_weight_keeping_attention_and_the_output_is_unchanged():
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "2", "--layers", "3"])
    model, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    batch.pop("labels_mask")
    assert batch["attention_mask"].eq(0).any()  # padded rows: the mask must reach both implementations
    model.model.language_model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(**batch).logits
    train_synthvlm.HeadAttention(model, (1,))
    ran = []
    for attention in (layer.self_attn for layer in train_synthvlm.QWEN_VL.decoder_layers(model)):
        attention.register_forward_hook(lambda m, i, out: ran.append(out[1] is not None))
    with torch.no_grad():
        mixed = model(**batch).logits
    assert ran == [False, True, False]  # log-weights only where kept: the other layers ran SDPA
    real = batch["attention_mask"].bool()
    assert torch.allclose(mixed[real], eager[real], atol=1e-5)


def test_a_bind_layer_outside_the_model_is_refused_before_training(tmp_path):
    for layer in ("2", "0"):
        with pytest.raises(SystemExit, match=f"--bind-layer {layer} does not fit a 2-layer"):
            train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, "--bind-layer", layer])
    assert not (tmp_path / "run").exists()


NAMES_TINY = ["--preset", "names", *TINY, "--layers", "3", "--image-size", "112"]


def test_in_the_names_world_gather_reads_the_question_and_copy_the_listed_name():
    """gather keys: the naming words of the question itself, never the list's colour words before it; copy:
    from the position predicting a name, the one place that name sits in the list, after its colour."""
    args = train_synthvlm.parse_args(NAMES_TINY + ["--out", "unused", "--batch-size", "40"])
    _, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(4, step=0)  # colour and name questions
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    ids, tok = batch["input_ids"], processor.tokenizer
    gather, read, copy = train_synthvlm.binding_targets(ids, batch["labels_mask"], rows.subjects, args.image_size, tok)
    end = tok.convert_tokens_to_ids(".")
    for row, query, key, _ in gather.tolist():
        assert (ids[row, key:query] == end).sum() == 0  # after the list's closing "."
    assert len(copy) > 0 and copy[:, 3].tolist() == list(range(len(copy)))
    for row, query, key, _ in copy.tolist():
        answer = tok.convert_ids_to_tokens(int(ids[row, query + 1]))
        subject = rows.subjects[row]
        assert answer == rows.scenes[row].name_of(subject.colour)
        assert int(ids[row, key]) == int(ids[row, query + 1])
        assert tok.convert_ids_to_tokens(ids[row, key - 2:key].tolist()) == [subject.colour, "is"]
    name_rows = {row for row, *_ in copy.tolist()}
    assert name_rows < {row for row, *_ in read.tolist()}  # colour questions read the image but copy nothing


def test_a_names_run_can_start_from_a_deep_run_and_keeps_the_shared_words(tmp_path):
    deep_args = train_synthvlm.parse_args(["--preset", "deep", *TINY, "--layers", "3", "--image-size", "112",
                                           "--out", "unused"])
    deep, deep_processor = train_synthvlm.build_fresh_model(deep_args)
    torch.save({"model": deep.state_dict()}, tmp_path / "deep.pt")
    names_args = train_synthvlm.parse_args(NAMES_TINY + ["--out", "unused", "--seed", "1"])
    model, processor = train_synthvlm.build_fresh_model(names_args)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    train_synthvlm.load_overlapping(model, deep.state_dict())
    shared = len(deep_processor.tokenizer)
    assert len(processor.tokenizer) > shared
    embedding, output = (model.state_dict()[k] for k in ("model.language_model.embed_tokens.weight", "lm_head.weight"))
    for name, new in (("model.language_model.embed_tokens.weight", embedding), ("lm_head.weight", output)):
        assert torch.equal(new[:shared], deep.state_dict()[name])
        # the added words' rows at the loaded rows' mean norm, not at the initialiser's
        assert torch.isclose(new[shared:].norm(dim=1).mean(), new[:shared].norm(dim=1).mean(), rtol=1e-4)
    cosine = torch.nn.functional.cosine_similarity
    assert torch.allclose(cosine(embedding[shared:], fresh["model.language_model.embed_tokens.weight"][shared:]),
                          torch.ones(len(embedding) - shared), atol=1e-5)  # same directions, rescaled
    assert torch.allclose(cosine(output[shared:], embedding[shared:]), torch.ones(len(output) - shared), atol=1e-5)
    assert torch.equal(model.state_dict()["model.visual.merger.mlp.0.weight"],
                       deep.state_dict()["model.visual.merger.mlp.0.weight"])

    out = tmp_path / "run"
    assert train_synthvlm.main(NAMES_TINY + ["--out", str(out), "--init-from", str(tmp_path / "deep.pt"),
                                             "--init-stage", "4"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {entry["stage"] for entry in log if "stage" in entry} == {4, 5}
    assert all(0 < entry["copy_loss"] < 15 for entry in log if "copy_loss" in entry)


def test_names_run_options_that_cannot_work_are_refused_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="--copy-loss supervises the layer after"):
        train_synthvlm.main(["--preset", "names", *TINY, "--out", str(out)])  # 2 layers: no layer after 1
    with pytest.raises(SystemExit, match="no such checkpoint"):
        train_synthvlm.main(NAMES_TINY + ["--out", str(out), "--init-from", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit, match="has stages 1..5"):
        train_synthvlm.main(NAMES_TINY + ["--out", str(out), "--init-from", str(evaluation.synthvlm_dir()),
                                          "--init-stage", "6"])
    assert not out.exists()
    wide = train_synthvlm.parse_args(NAMES_TINY + ["--out", "unused", "--hidden", "32"])
    narrow, _ = train_synthvlm.build_fresh_model(train_synthvlm.parse_args(NAMES_TINY + ["--out", "unused"]))
    model, _ = train_synthvlm.build_fresh_model(wide)
    with pytest.raises(SystemExit, match="same sizes"):
        train_synthvlm.load_overlapping(model, narrow.state_dict())
    deeper, _ = train_synthvlm.build_fresh_model(train_synthvlm.parse_args(NAMES_TINY + ["--out", "unused", "--layers", "4"]))
    with pytest.raises(SystemExit, match="same architecture"):  # layers 3 of 4 would stay untrained, silently
        train_synthvlm.load_overlapping(deeper, narrow.state_dict())
    torch.save({"weights": narrow.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a training checkpoint"):
        train_synthvlm.main(NAMES_TINY + ["--out", str(out), "--init-from", str(tmp_path / "other.pt")])
    assert not out.exists()


def test_copy_readout_reads_the_copy_layer_through_the_output_rows_and_trains_what_writes_it():
    """The readout's loss is the names' cross-entropy of the copy layer's output (final norm, output rows) at the
    positions predicting a name; its gradient reaches the copy layer's attention output projection but not the
    output rows or the final norm, which stay the answer loss's."""
    args = train_synthvlm.parse_args(NAMES_TINY + ["--out", "unused", "--batch-size", "16", "--copy-readout", "1"])
    model, processor = train_synthvlm.build_fresh_model(args)
    copy_layer = args.bind_layer + 1
    hidden = train_synthvlm.LayerOutput(model, copy_layer)
    rows = train_synthvlm.CurriculumStream(args).batch(4, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    tok = processor.tokenizer
    _, _, copy = train_synthvlm.binding_targets(batch["input_ids"], batch.pop("labels_mask"), rows.subjects,
                                                args.image_size, tok)
    assert len(copy) > 0
    model(**batch)
    name_ids = torch.tensor(tok.convert_tokens_to_ids(list(train_synthvlm.NAMES)))
    answers = batch["input_ids"][copy[:, 0], copy[:, 2]]
    at_queries = hidden.hidden[copy[:, 0], copy[:, 1]]
    loss = train_synthvlm.copy_readout_loss(model, at_queries, answers, name_ids)
    # the same as the model's own head over the name columns, applied to that layer's output
    logits = model.lm_head(model.model.language_model.norm(at_queries))[:, name_ids]
    right = [train_synthvlm.NAMES.index(name) for name in tok.convert_ids_to_tokens(answers.tolist())]
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor(right)), rtol=1e-5)
    assert 0 < loss.item() < 15
    loss.backward()
    o_proj = train_synthvlm.QWEN_VL.decoder_layers(model)[copy_layer].self_attn.o_proj.weight
    assert o_proj.grad is not None and o_proj.grad.abs().sum() > 0
    assert model.lm_head.weight.grad is None and model.model.language_model.norm.weight.grad is None
    later = train_synthvlm.QWEN_VL.decoder_layers(model)[copy_layer + 1:]
    assert all(p.grad is None for layer in later for p in layer.parameters())  # it reads before them


def test_copy_readout_is_logged_only_when_asked_and_refused_without_the_copy_hop(tmp_path):
    for readout in ("0", "1"):
        out = tmp_path / f"run{readout}"
        assert train_synthvlm.main(NAMES_TINY + ["--out", str(out), "--batch-size", "8",
                                                 "--copy-readout", readout]) == 0
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        values = [entry["copy_readout_loss"] for entry in log if "copy_readout_loss" in entry]
        assert (len(values) > 0) == (readout == "1") and all(0 < v < 15 for v in values)
    for flags in (TINY, NAMES_TINY + ["--copy-loss", "0"]):
        with pytest.raises(SystemExit, match="--copy-readout reads the copy layer's output.*needs --copy-loss > 0"):
            train_synthvlm.main([*flags, "--out", str(tmp_path / "refused"), "--copy-readout", "1"])
    assert not (tmp_path / "refused").exists()


def test_spread_loss_is_the_inverse_participation_ratio_of_the_sampled_tokens_directions():
    """1 when every token's residual points one way (whatever its length), 1/d for an orthonormal set, and the
    inverse participation ratio of H = Σ x xᵀ over the normalised vectors in general; it only reads the tokens
    asked for, and its gradient pushes a shared direction out of the residual stream."""
    shared = torch.randn(16)
    same = shared * torch.rand(2, 5, 1).add(0.5)  # rows × positions, every vector along `shared`
    everywhere = torch.tensor([[r, p] for r in range(2) for p in range(5)])
    assert torch.isclose(train_synthvlm.spread_loss([same], everywhere), torch.tensor(1.0))
    basis = torch.eye(16).reshape(2, 8, 16) * 3.0
    assert torch.isclose(train_synthvlm.spread_loss([basis], torch.tensor([[r, p] for r in range(2) for p in range(8)])),
                         torch.tensor(1 / 16))
    h = torch.randn(3, 7, 16) + 2.0 * shared
    tokens = torch.tensor([[0, 1], [2, 6], [1, 3], [2, 0], [0, 4]])
    x = torch.nn.functional.normalize(h[tokens[:, 0], tokens[:, 1]].double(), dim=-1)
    participation = headroom.participation_ratio(x.T @ x)  # the headroom probe's own measure
    assert train_synthvlm.spread_loss([h], tokens).item() == pytest.approx(1 / participation, rel=1e-5)
    inside_both = tokens[:4] % torch.tensor([2, 5])
    assert train_synthvlm.spread_loss([h, same], inside_both).item() == pytest.approx(
        (train_synthvlm.spread_loss([h], inside_both).item() + 1.0) / 2, rel=1e-5)  # the mean over layers
    h.requires_grad_(True)
    train_synthvlm.spread_loss([h], tokens).backward()
    assert (h.grad[tokens[:, 0], tokens[:, 1]] @ shared > 0).all()  # descent removes the shared direction
    untouched = torch.ones(3, 7, dtype=torch.bool)
    untouched[tokens[:, 0], tokens[:, 1]] = False
    assert h.grad[untouched].abs().max() == 0


def test_spread_tokens_draws_distinct_unpadded_tokens():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    picked = train_synthvlm.spread_tokens(mask, 6, torch.Generator().manual_seed(0))
    assert len(picked) == 6 and len({tuple(p) for p in picked.tolist()}) == 6
    assert all(mask[r, p] for r, p in picked.tolist())
    assert len(train_synthvlm.spread_tokens(mask, 100, torch.Generator().manual_seed(0))) == 8  # all of them


def test_spread_inputs_keep_each_layer_input_or_each_distinct_linear_input():
    args = train_synthvlm.parse_args([*TINY, "--out", "unused"])
    model, processor = train_synthvlm.build_fresh_model(args)
    residual, linears = (train_synthvlm.SpreadInputs(model, where) for where in ("residual", "linears"))
    rows = train_synthvlm.CurriculumStream(args).batch(1, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    kept = {}
    layers = train_synthvlm.QWEN_VL.decoder_layers(model)
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, k, i=i: kept.__setitem__(i, (a[0] if a else k["hidden_states"]).clone()),
                                        with_kwargs=True)
        layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: kept.__setitem__(f"{i}.down", a[0].clone()))
    train_synthvlm.training_loss(model, batch)
    assert sorted(residual.hidden) == list(range(len(layers)))
    assert all(torch.equal(residual.hidden[i], kept[i]) for i in range(len(layers)))
    assert len(linears.hidden) == 4 * len(layers)
    for i, layer in enumerate(layers):
        normed = layer.input_layernorm(kept[i])
        assert torch.allclose(linears.hidden[f"{i}.self_attn.q_proj"], normed)
        assert torch.equal(linears.hidden[f"{i}.mlp.down_proj"], kept[f"{i}.down"])
        assert linears.hidden[f"{i}.mlp.down_proj"].shape[-1] == args.intermediate


@pytest.mark.parametrize("where", ["residual", "linears"])
def test_spread_loss_is_logged_only_when_asked(tmp_path, where):
    for weight in ("0", "1"):
        out = tmp_path / f"run{weight}"
        flags = ["--spread-loss", weight] + (["--spread-at", where] if weight == "1" else [])
        assert train_synthvlm.main([*TINY, "--out", str(out), *flags]) == 0
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        values = [entry["spread_loss"] for entry in log if "spread_loss" in entry]
        assert (len(values) > 0) == (weight == "1") and all(0 < v <= 1 for v in values)
    with pytest.raises(SystemExit, match="--spread-at .* but --spread-loss is 0.0: give --spread-loss W > 0"):
        train_synthvlm.main([*TINY, "--out", str(tmp_path / "refused"), "--spread-at", where])
    assert not (tmp_path / "refused").exists()


def test_steps_are_a_function_of_seed_stage_and_step_whoever_prepares_them():
    """Resuming at a step, or preparing steps ahead in --data-workers processes, gives the same batches: each
    step's rows depend on (seed, stage, step) alone, and no two steps share an image."""
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "6"])
    _, processor = train_synthvlm.build_fresh_model(args)
    stream = train_synthvlm.CurriculumStream(args)
    first, again, later = stream.batch(FINAL_STAGE, 5), stream.batch(FINAL_STAGE, 5), stream.batch(FINAL_STAGE, 6)
    assert first.conversations == again.conversations and first.scenes == again.scenes
    assert not set(map(repr, first.scenes)) & set(map(repr, later.scenes))
    wanted = [(1, 0), (1, 1), (2, 2), (FINAL_STAGE, 3), (FINAL_STAGE, 4)]  # a stage change drops prepared steps
    feeder = train_synthvlm.StepFeeder(args, processor, workers=2, ahead=3)
    try:
        for stage, step in wanted:
            here, there = train_synthvlm.prepare_step(args, processor, stage, step), feeder.get(stage, step)
            assert here.batch.keys() == there.batch.keys() and here.n_images == there.n_images
            assert all(torch.equal(here.batch[k], there.batch[k]) for k in here.batch)
            assert torch.equal(here.labels, there.labels)
            assert all(torch.equal(a, b) for a, b in zip(here.targets, there.targets))
        assert all(key[0] == FINAL_STAGE and key[1] > 4 for key in feeder.pending)
    finally:
        feeder.close()
    # closing waits for the steps still being prepared (a worker stopped mid-hand-over breaks the pool's results)
    assert feeder.pending and all(job.done() for job in feeder.pending.values())


def test_a_data_worker_that_dies_stops_the_run_with_a_clear_error():
    """A --data-workers process killed mid-run (out of memory, say) fails the step it held: the trainer exits
    with a one-line error instead of waiting forever for a batch that will never come."""
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "6"])
    _, processor = train_synthvlm.build_fresh_model(args)
    before = set(multiprocessing.active_children())
    feeder = train_synthvlm.StepFeeder(args, processor, workers=1, ahead=2)
    outcome = {}

    def fetch():
        try:
            feeder.get(1, 0)  # the worker is up
            for worker in set(multiprocessing.active_children()) - before:
                os.kill(worker.pid, signal.SIGKILL)
            for step in range(1, 6):  # a step prepared before the kill may still arrive; a later one cannot
                feeder.get(1, step)
        except BaseException as e:  # the SystemExit is the outcome under test
            outcome["error"] = e

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the trainer waits forever for a step a killed worker held"
    feeder.close()  # not when hung: closing would wait for the lost step too
    assert isinstance(outcome.get("error"), SystemExit)
    assert "--data-workers process died" in str(outcome["error"]) and "resume" in str(outcome["error"])


def test_a_run_can_start_from_an_exported_model(tmp_path):
    """--init-from takes an exported folder too (the shipped model's, say): its weights as evaluation loads them."""
    from transformers import AutoModelForImageTextToText

    source = tmp_path / "source"
    assert train_synthvlm.main(["--out", str(tmp_path / "first"), "--export", str(source), *TINY]) == 0
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--seed", "3", "--world", "synthvlm-faint",
                                             "--init-from", str(source), "--init-stage", "3"])
    model, _ = train_synthvlm.build_fresh_model(args)
    start = train_synthvlm.initial_weights(source, model, torch.device("cpu"))
    train_synthvlm.load_overlapping(model, start["model"])
    exported = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32).state_dict()
    assert model.state_dict().keys() == exported.keys()
    assert all(torch.equal(model.state_dict()[k], exported[k]) for k in exported)
    second = tmp_path / "second"  # and through the command line, into another world's final stage
    assert train_synthvlm.main(TINY + ["--out", str(second), "--world", "synthvlm-faint", "--init-from", str(source),
                                       "--init-stage", "3"]) == 0
    log = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
    assert {entry["stage"] for entry in log if "stage" in entry} == {3}
    with pytest.raises(SystemExit, match="no such checkpoint file or exported model"):
        train_synthvlm.parse_args(TINY + ["--out", "unused", "--init-from", str(tmp_path / "first")])


TEXT = ["--text-vocab", "300", "--text-steps", "2", "--text-rows", "2", "--text-length", "16",
        "--text-pretrain-rows", "4"]


def test_a_text_run_learns_the_stdlib_first_keeps_it_in_every_curriculum_step_and_keeps_the_worlds_ids(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    assert train_synthvlm.main(["--out", str(out), "--export", str(export), *TINY, *TEXT]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    text_steps = [entry["step"] for entry in log if entry.get("text_pretraining")]
    curriculum = [entry for entry in log if "stage" in entry]
    assert text_steps == [1, 2] and curriculum[0]["step"] == 3
    # the first stage's step budget (1) counts from the end of the text: stage 1 is validated at step 3, not skipped
    assert curriculum[0]["stage"] == 1 and "stage1" in curriculum[0]
    assert all(0 < entry["text_loss"] < 15 and 0 < entry["text_held_out_loss"] < 15 for entry in curriculum)
    plain = train_synthvlm.build_fresh_model(train_synthvlm.parse_args(TINY + ["--out", "unused"]))[1].tokenizer
    _, processor = evaluation.load_for_eval(export)
    vocab, plain_vocab = processor.tokenizer.get_vocab(), plain.get_vocab()
    assert {word: vocab[word] for word in plain_vocab} == plain_vocab  # the world's words keep their ids
    assert {"self", "def", "return"} <= set(vocab) and len(vocab) > len(plain_vocab) + 200


def test_text_loss_scores_every_next_word_but_unknown_ones():
    unknown = 1
    args = train_synthvlm.parse_args([*TINY, "--out", "unused"])
    model, _ = train_synthvlm.build_fresh_model(args)
    windows = torch.tensor([[2, 3, unknown, 4], [4, 4, 3, 2]])
    logits = model(input_ids=windows).logits
    kept = [(0, 0, 3), (0, 2, 4), (1, 0, 4), (1, 1, 3), (1, 2, 2)]  # (row, position, next word); (0, 1) is unknown
    expected = torch.stack([-logits[r, p].log_softmax(-1)[w] for r, p, w in kept]).mean()
    assert torch.allclose(train_synthvlm.text_loss(model, windows, unknown), expected, atol=1e-6)


def test_answer_loss_from_the_answer_positions_alone_equals_it_over_every_position():
    """training_loss runs the LM head on the positions that predict answer tokens only; loss and gradients must be
    those of the cross-entropy over the full logits, masked (a shift by one, or another row order, would not be)."""
    args = train_synthvlm.parse_args([*TINY, "--out", "unused", "--batch-size", "3"])
    model, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    answers = batch["labels_mask"][:, 1:]
    assert answers.any(1).all() and not answers.all()
    full = model(**{k: v for k, v in batch.items() if k != "labels_mask"}).logits[:, :-1]
    expected = torch.nn.functional.cross_entropy(full[answers], batch["input_ids"][:, 1:][answers])
    expected_grad = torch.autograd.grad(expected, model.lm_head.weight)[0]
    loss = train_synthvlm.training_loss(model, dict(batch))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(torch.autograd.grad(loss, model.lm_head.weight)[0], expected_grad, atol=1e-6)


def test_text_training_without_the_texts_words_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match="--text-vocab"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, "--text-rows", "2"])
    assert not (tmp_path / "run").exists()
    for bad in (["--text-rows", "-1"], ["--text-vocab", "300", "--text-length", "0"]):
        with pytest.raises(SystemExit, match=f"{bad[-2]} {bad[-1]} is out of range"):
            train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, *bad])
    assert not (tmp_path / "run").exists()


def test_a_resume_rebuilds_the_model_from_its_checkpoints_words_and_refuses_weights_it_cannot_take(tmp_path,
                                                                                                    monkeypatch):
    out, export = tmp_path / "run", tmp_path / "export"
    assert train_synthvlm.main(["--out", str(out), *TINY, *TEXT]) == 0
    words = torch.load(out / "ckpt.pt", weights_only=False)["words"]
    assert words == train_synthvlm.vocabulary(train_synthvlm.parse_args(["--out", "unused", *TINY, *TEXT]))
    # another Python's standard library gives --text-vocab other words: the resume keeps the run's own
    other = lambda args: words[:-7] + ["another", "pythons", "words"]  # noqa: E731
    monkeypatch.setattr(train_synthvlm, "vocabulary", other)
    assert train_synthvlm.main(["--out", str(out), "--export", str(export), "--export-only", *TINY, *TEXT]) == 0
    _, processor = evaluation.load_for_eval(export)
    vocab = processor.tokenizer.get_vocab()
    assert set(words) <= set(vocab) and "pythons" not in vocab
    # --init-from the checkpoint gets its vocabulary in id order, as from an exported folder: rows follow words
    model = train_synthvlm.build_fresh_model(train_synthvlm.parse_args(["--out", "unused", *TINY, *TEXT]))[0]
    start = train_synthvlm.initial_weights(out / "ckpt.pt", model, torch.device("cpu"))
    assert start["words"] == sorted(vocab, key=vocab.get)
    # a checkpoint from before the words were saved in it: refused in one line, not a shape traceback
    saved = torch.load(out / "ckpt.pt", weights_only=False)
    del saved["words"]
    torch.save(saved, out / "ckpt.pt")
    with pytest.raises(SystemExit, match="embed_tokens.*resume with the flags and the Python that started the run"):
        train_synthvlm.main(["--out", str(out), *TINY, *TEXT])


FACTS_TINY = TINY + ["--world", "synthvlm-facts", "--fact-rows", "2", "--text-length", "20"]


def test_fact_windows_are_whole_table_entries_whose_meaning_words_alone_are_targets():
    args = train_synthvlm.parse_args(FACTS_TINY + ["--out", "unused"])
    tokenizer = train_synthvlm.build_fresh_model(args)[1].tokenizer
    table = train_synthvlm.fact_table(args.world)
    stream = train_synthvlm.FactStream(args, tokenizer)
    windows, targets = stream.batch(step=3, rows=2)
    assert windows.shape == (2, 18)  # three entries of six words fit in 20
    for row, target_row in zip(windows.tolist(), targets.tolist()):
        words = tokenizer.convert_ids_to_tokens(row)
        for start in range(0, len(words), 6):
            glyphs, entry = "".join(words[start:start + 3]), words[start:start + 6]
            assert entry == f"{table.statement(glyphs)} ,".split()
        kept = [(i, t) for i, t in enumerate(target_row) if t != -100]
        assert [i for i, _ in kept] == [4, 10, 16]  # each entry's meaning word, nothing else
        assert all(t == row[i] for i, t in kept)
    again, _ = stream.batch(step=3, rows=2)
    assert torch.equal(again, windows)  # a pure function of the step: resuming draws the same windows
    assert not torch.equal(stream.batch(step=4, rows=2)[0], windows)


def test_a_facts_run_logs_its_fact_loss_and_reads_only_the_spelled_glyphs(tmp_path):
    out = tmp_path / "run"
    assert train_synthvlm.main(["--out", str(out), *FACTS_TINY]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(0 < entry["fact_loss"] < 20 for entry in log if "stage" in entry)
    args = train_synthvlm.parse_args(FACTS_TINY + ["--out", "unused", "--batch-size", "40"])
    _, processor = train_synthvlm.build_fresh_model(args)
    rows = train_synthvlm.CurriculumStream(args).batch(3, step=0)
    batch = train_synthvlm.encode_training_batch(processor, rows.conversations, rows.images)
    _, read, _ = train_synthvlm.binding_targets(batch["input_ids"], batch["labels_mask"], rows.subjects,
                                                args.image_size, processor.tokenizer)
    meaning_rows = [i for i, c in enumerate(rows.conversations) if "mean ?" in c[0]["content"][1]["text"]]
    assert meaning_rows
    for i in meaning_rows:  # "9 6 A means w0412": the three glyphs are read from the image, the rest recalled
        assert (read[:, 0] == i).sum() == 3


def test_the_recall_ft_preset_fine_tunes_a_given_export_and_refuses_to_start_without_one(tmp_path):
    with pytest.raises(SystemExit, match="--init-stage 4 .* give --init-from"):
        train_synthvlm.parse_args(["--preset", "recall-ft"])  # it would train from scratch with no text steps
    export = str(evaluation.synthvlm_dir("synthvlm-recall"))  # any exported model: parse_args only checks it is one
    args = vars(train_synthvlm.parse_args(["--preset", "recall-ft", "--init-from", export]))
    recall = vars(train_synthvlm.parse_args(["--preset", "recall"]))
    assert {k: args[k] for k in args if args[k] != recall[k]} == {
        "preset": "recall-ft", "init_from": export, "init_stage": 4, "text_steps": 0, "lr": 5e-4,
        "warmup": 20, "final_steps": 400, "eval_every": 50, "out": "runs/recall-ft"}


def test_the_recall_preset_is_the_facts_recipe_in_the_recall_world():
    facts, recall = (vars(train_synthvlm.parse_args(["--preset", name])) for name in ("facts", "recall"))
    assert (recall["world"], recall["out"]) == ("deep-recall", "runs/recall")
    differ = {k for k in facts if facts[k] != recall[k]}
    assert differ == {"preset", "world", "out"}


def test_the_facts_preset_learns_the_table_from_text_from_its_first_step(tmp_path, monkeypatch):
    args = train_synthvlm.parse_args(["--preset", "facts", "--out", "unused"])
    assert (args.world, args.layers, args.image_size) == ("deep-facts", 8, 392)
    assert args.fact_pretrain_rows > args.fact_rows > 0  # the cheap text steps carry most of the table
    assert args.text_vocab > 0 and args.text_steps > 0 and args.text_rows > 0
    assert train_synthvlm.parse_args(FACTS_TINY + ["--out", "unused"]).fact_pretrain_rows == 2  # default: --fact-rows
    drawn = []
    batch = train_synthvlm.FactStream.batch
    monkeypatch.setattr(train_synthvlm.FactStream, "batch",
                        lambda self, step, rows: drawn.append((step, rows)) or batch(self, step, rows))
    out = tmp_path / "run"
    small = ["--text-vocab", "300", "--text-steps", "2", "--text-rows", "1", "--text-length", "20",
             "--text-pretrain-rows", "2", "--fact-pretrain-rows", "3", "--fact-rows", "1", "--layers", "3",
             "--image-size", "112"]
    assert train_synthvlm.main(["--preset", "facts", "--out", str(out), *TINY, *small]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    text_phase = [entry for entry in log if entry.get("text_pretraining")]
    assert len(text_phase) == 2 and all(0 < entry["fact_loss"] < 20 for entry in text_phase)
    assert drawn[:2] == [(0, 3), (1, 3)] and {rows for _, rows in drawn[2:]} == {1}
    # --fact-pretrain-rows alone: the table in the text steps only, no fact rows in the curriculum
    assert train_synthvlm.main(["--preset", "facts", "--out", str(tmp_path / "pre"), *TINY, *small,
                                "--fact-rows", "0"]) == 0
    log = [json.loads(line) for line in (tmp_path / "pre" / "log.jsonl").read_text().splitlines()]
    assert all("fact_loss" in entry for entry in log if entry.get("text_pretraining"))
    assert not any("fact_loss" in entry for entry in log if "stage" in entry)


def test_the_synthvlm_recall_chain_runs_facts_then_recall_ft_from_its_export_in_one_resumable_command(tmp_path,
                                                                                                    monkeypatch):
    monkeypatch.setitem(train_synthvlm.PRESETS, "facts", dict(train_synthvlm.PRESETS["facts"], text_steps=2))
    out = tmp_path / "chain"
    flags = [*TINY, "--text-vocab", "300", "--text-rows", "1", "--text-length", "20", "--text-pretrain-rows", "2",
             "--fact-pretrain-rows", "3", "--fact-rows", "1", "--layers", "3", "--image-size", "112"]
    with pytest.raises(SystemExit, match="the facts part stopped before its schedule ended"):
        train_synthvlm.main(["--preset", "synthvlm-recall", "--out", str(out), *flags, "--max-minutes", "0"])
    assert not (out / "recall-ft").exists()  # the second part never starts from an unfinished first part
    assert train_synthvlm.main(["--preset", "synthvlm-recall", "--out", str(out), *flags]) == 0  # resumes facts
    logs = {part: [json.loads(line) for line in (out / part / "log.jsonl").read_text().splitlines()]
            for part in ("facts", "recall-ft")}
    facts_args, ft_args = (next(e["args"] for e in logs[part] if "args" in e) for part in ("facts", "recall-ft"))
    assert (facts_args["world"], facts_args["init_from"]) == ("deep-facts", None)
    assert (ft_args["world"], ft_args["init_from"], ft_args["init_stage"], ft_args["lr"], ft_args["text_steps"]) == \
        ("deep-recall", str(out / "facts-model"), 4, 5e-4, 0)
    assert all(e.get("stage", 4) == 4 for e in logs["recall-ft"])  # fine-tuned in the final stage only
    config = json.loads((out / "model" / "config.json").read_text())  # the default --export: OUT/model
    assert config["synth_world"] == "deep-recall"
    steps = {part: torch.load(out / part / "ckpt.pt", weights_only=False)["step"] for part in ("facts", "recall-ft")}
    assert train_synthvlm.main(["--preset", "synthvlm-recall", "--out", str(out), *flags]) == 0  # finished: no steps
    assert steps == {part: torch.load(out / part / "ckpt.pt", weights_only=False)["step"] for part in steps}
    with pytest.raises(SystemExit, match="--init-from: the synthvlm-recall chain sets it for each part"):
        train_synthvlm.main(["--preset", "synthvlm-recall", "--out", str(out), "--init-from", str(out / "model")])
    with pytest.raises(SystemExit, match="run it through main"):
        train_synthvlm.parse_args(["--preset", "synthvlm-recall"])


def test_an_exported_model_gives_each_word_its_rows_where_the_new_vocabulary_has_that_word(tmp_path):
    """A facts world adds words between the world's and the text's: an exported text run's rows follow their words."""
    source = tmp_path / "source"
    assert train_synthvlm.main(["--out", str(tmp_path / "text"), "--export", str(source), *TINY, *TEXT]) == 0
    args = train_synthvlm.parse_args(FACTS_TINY + ["--out", "unused", "--text-vocab", "300", "--init-from", str(source)])
    model, processor = train_synthvlm.build_fresh_model(args)
    start = train_synthvlm.initial_weights(source, model, torch.device("cpu"))
    vocab = processor.tokenizer.get_vocab()
    words = sorted(vocab, key=vocab.get)
    train_synthvlm.load_overlapping(model, start["model"], start["words"], words)
    theirs = {word: i for i, word in enumerate(start["words"])}
    shared = [w for w in words if w in theirs]
    assert "self" in shared and vocab["self"] != theirs["self"]  # the text's words moved up past the facts' words
    embedding_name = next(k for k in start["model"] if k.endswith("embed_tokens.weight"))
    mine, source_rows = model.get_input_embeddings().weight, start["model"][embedding_name]
    assert all(torch.equal(mine[vocab[w]], source_rows[theirs[w]]) for w in shared)
    added = torch.tensor([vocab[w] for w in words if w not in theirs])
    assert len(added) >= 1024  # the facts' meaning words, at the loaded rows' mean norm
    kept = torch.tensor([vocab[w] for w in shared])
    assert torch.isclose(mine[added].norm(dim=1).mean(), mine[kept].norm(dim=1).mean(), rtol=1e-4)


def test_fact_rows_outside_a_facts_world_are_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match="--world synthvlm-facts"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, "--fact-rows", "2"])
    with pytest.raises(SystemExit, match="--fact-rows -1 is out of range"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *FACTS_TINY, "--fact-rows", "-1"])
    with pytest.raises(SystemExit, match="--world synthvlm-facts"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *TINY, "--fact-pretrain-rows", "2"])
    with pytest.raises(SystemExit, match="--fact-pretrain-rows -1 is out of range"):
        train_synthvlm.main(["--out", str(tmp_path / "run"), *FACTS_TINY, "--fact-pretrain-rows", "-1"])
    assert not (tmp_path / "run").exists()
