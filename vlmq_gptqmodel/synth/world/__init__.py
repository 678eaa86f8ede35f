"""Synthetic visual world: a few small shapes and short texts on a plain background, with captions and QA.

Most of each image is background, so most vision tokens are redundant and a few are salient, as in real
VLM inputs. Everything is generated from seeds with pillow; nothing is downloaded.
"""
from vlmq_gptqmodel.synth.world.language import CAPTION_PROMPT, QA, caption, questions
from vlmq_gptqmodel.synth.world.samples import (
    DEFAULT_IMAGE_SIZE, Sample, assistant_turn, calibration_conversations, caption_conversation, make_sample,
    make_samples, user_turn,
)
from vlmq_gptqmodel.synth.world.scene import (
    DEFAULT_WORLD, FINAL_STAGE, QUESTION_KINDS, STAGES, WORLDS, Scene, Stage, World, final_stage, get_world,
)
from vlmq_gptqmodel.synth.world.vocab import VOCAB

__all__ = [
    "CAPTION_PROMPT", "DEFAULT_IMAGE_SIZE", "DEFAULT_WORLD", "FINAL_STAGE", "QA", "QUESTION_KINDS", "STAGES", "Sample", "Scene",
    "Stage", "VOCAB", "WORLDS", "World", "assistant_turn", "calibration_conversations", "caption", "caption_conversation", "final_stage", "get_world",
    "make_sample", "make_samples", "questions", "user_turn",
]
