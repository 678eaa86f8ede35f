"""tools/train_synthvlm.py end to end on a tiny model: the curriculum runs through every stage, the export
loads as an fp16 Qwen2-VL, a rerun resumes from the checkpoint instead of starting over, and the loss
only sees the assistant's words."""
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_synthvlm  # noqa: E402

from vlmq_gptqmodel import evaluation  # noqa: E402
from vlmq_gptqmodel.world import CAPTION_PROMPT, FINAL_STAGE, user_turn  # noqa: E402

TINY = ["--hidden", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64",
        "--vision-depth", "1", "--vision-hidden", "32", "--vision-heads", "2", "--image-size", "84",
        "--batch-size", "2", "--warmup", "1", "--max-stage-steps", "1", "--eval-every", "1",
        "--final-steps", "1", "--val-samples", "1"]


def test_curriculum_runs_every_stage_exports_and_resumes(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    assert train_synthvlm.main(["--out", str(out), "--export", str(export), *TINY]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stages = [entry["stage"] for entry in log if "stage" in entry]
    assert stages == sorted(stages) and set(stages) == set(range(1, FINAL_STAGE + 1))
    assert all(0 < entry["tile_loss"] < 10 for entry in log if "stage" in entry)
    saved = json.loads((export / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "float16"
    model, processor = evaluation.load_for_eval(export)
    assert evaluation.processor_image_size(processor) == 84
    steps = torch.load(out / "ckpt.pt", weights_only=False)["step"]

    assert train_synthvlm.main(["--out", str(out), *TINY]) == 0  # already finished: nothing more to train
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == steps


def test_tile_probe_sees_one_vision_token_per_tile_of_every_row():
    """The hooked vision tokens line up with tile_labels: one per tile, rows in batch order."""
    args = train_synthvlm.parse_args(TINY + ["--out", "unused", "--batch-size", "6"])
    model, processor = train_synthvlm.build_fresh_model(args)
    tokens = train_synthvlm.VisionTokens(model)
    conversations, images, scenes = train_synthvlm.CurriculumStream(args).batch(FINAL_STAGE, np.random.default_rng(0))
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
    conversations, images, scenes = stream.batch(FINAL_STAGE, np.random.default_rng(0))
    assert len(conversations) == len(images) == len(scenes) == 40
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
