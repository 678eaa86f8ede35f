"""Captions and question/answer pairs for a scene, in the world's small word-level language."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from vlmq_gptqmodel.synth.world.scene import Scene, SceneObject, SceneText
from vlmq_gptqmodel.synth.world.vocab import COLOURS, NUMBER_WORDS, POSITION_NAMES, SHAPE_PLURALS, SHAPES

CAPTION_PROMPT = "describe the image ."
# How often a "no" existence question names a combination that shares a colour or shape with the scene.
HARD_NEGATIVE_PROBABILITY = 0.7


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str
    # The object or text the answer reads from (None for count and existence questions); for the training
    # script's attention supervision. Not part of equality: two QAs with the same words are the same question.
    subject: SceneObject | SceneText | None = field(default=None, compare=False)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def spelled(glyphs: str) -> str:
    """Text is read back one glyph per word: "4A2" -> "4 A 2"."""
    return " ".join(glyphs)


def describe_item(item: SceneObject | SceneText, scene: Scene) -> str:
    """Terse, like a tag list, so captions stay much shorter than the image's token count. In the names world an
    object's entry carries the name the prompt's list gives its colour, so captions (the calibration data) use
    the list as the name questions do."""
    where = POSITION_NAMES[item.row][item.col]
    if isinstance(item, SceneText):
        return f"text {scene.facts.statement(item.glyphs) if scene.facts else spelled(item.glyphs)} {where}"
    name = f" {scene.name_of(item.colour)}" if scene.names else ""
    return f"{item.size} {item.colour} {item.shape}{name} {where}"


def caption(scene: Scene) -> str:
    """Every item in reading order: "big red circle top left , small blue square center center and text 4 A bottom center .";
    in the names world "big red circle n017 top left , ..."."""
    parts = [describe_item(item, scene) for item in scene.items_in_reading_order()]
    body = parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]
    return body + " ."


def naming_prefix(scene: Scene) -> str:
    """The names world's list, "red is n017 , blue is n203 . " ("" in scenes without names)."""
    if not scene.names:
        return ""
    return " , ".join(f"{colour} is {name}" for colour, name in scene.names) + " . "


def caption_prompt(scene: Scene) -> str:
    return naming_prefix(scene) + CAPTION_PROMPT


def _unique(objects, key):
    counts = Counter(key(o) for o in objects)
    return [o for o in objects if counts[key(o)] == 1]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _ask_about_unique(scene: Scene, rng: np.random.Generator, kind: str, key, question, answer) -> QA | None:
    """Ask about one object that `key` singles out in the scene (None when no object is unique by `key`)."""
    candidates = _unique(scene.objects, key)
    if not candidates:
        return None
    obj = _pick(rng, candidates)
    return QA(kind, question(obj), answer(obj), obj)


def ask_colour(scene: Scene, rng: np.random.Generator) -> QA | None:
    return _ask_about_unique(scene, rng, "colour", lambda o: o.shape,
                             lambda o: f"what colour is the {o.shape} ?", lambda o: o.colour)


def ask_shape(scene: Scene, rng: np.random.Generator) -> QA | None:
    return _ask_about_unique(scene, rng, "shape", lambda o: o.colour,
                             lambda o: f"what shape is the {o.colour} object ?", lambda o: o.shape)


def ask_count(scene: Scene, rng: np.random.Generator) -> QA:
    # Mostly shapes that are present, so counts above zero are common.
    present = sorted({o.shape for o in scene.objects})
    shape = _pick(rng, present) if present and rng.random() < 0.6 else _pick(rng, SHAPES)
    n = sum(o.shape == shape for o in scene.objects)
    return QA("count", f"how many {SHAPE_PLURALS[shape]} are there ?", NUMBER_WORDS[n])


def ask_exists(scene: Scene, rng: np.random.Generator) -> QA:
    present = {(o.colour, o.shape) for o in scene.objects}
    if present and rng.random() < 0.5:
        colour, shape = _pick(rng, sorted(present))
        answer = "yes"
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
        pool = hard if hard and rng.random() < HARD_NEGATIVE_PROBABILITY else absent
        colour, shape = _pick(rng, pool)
        answer = "no"
    return QA("exists", f"is there {_article(colour)} {colour} {shape} ?", answer)


def ask_position(scene: Scene, rng: np.random.Generator) -> QA | None:
    return _ask_about_unique(scene, rng, "position", lambda o: (o.colour, o.shape),
                             lambda o: f"where is the {o.colour} {o.shape} ?", lambda o: POSITION_NAMES[o.row][o.col])


def ask_text(scene: Scene, rng: np.random.Generator) -> QA | None:
    if scene.text is None:
        return None
    return QA("text", "what does the text say ?", spelled(scene.text.glyphs), scene.text)


def ask_name(scene: Scene, rng: np.random.Generator) -> QA | None:
    """The name the list gives the colour of the object with a unique shape (the image says which colour)."""
    if not scene.names:
        return None
    return _ask_about_unique(scene, rng, "name", lambda o: o.shape,
                             lambda o: f"what is the name of the {o.shape} ?", lambda o: scene.name_of(o.colour))


def ask_meaning(scene: Scene, rng: np.random.Generator) -> QA | None:
    """What the facts world's table says the text means, after the text itself: "9 6 A means w0412". Spelling it
    first puts the lookup's key in the answer's own tokens, as a language model names an entity before recalling
    a fact about it (asked for the meaning alone, a model that read the glyphs well learned no entry of a smaller
    table in 500 steps: the lexicon world, tools/TRAINING.md). The subject is the text: the answer starts by
    reading it."""
    if scene.text is None or scene.facts is None:
        return None
    return QA("meaning", "what does the text mean ?", scene.facts.statement(scene.text.glyphs), scene.text)


ASKERS = {
    "colour": ask_colour, "shape": ask_shape, "count": ask_count,
    "exists": ask_exists, "position": ask_position, "text": ask_text, "name": ask_name, "meaning": ask_meaning,
}


def questions(scene: Scene, rng: np.random.Generator, kinds) -> list[QA]:
    """At most one question per kind, in `kinds` order; kinds the scene cannot support are skipped. In the
    names world every question starts with the scene's name list."""
    asked = (ASKERS[kind](scene, rng) for kind in kinds)
    prefix = naming_prefix(scene)
    return [replace(qa, question=prefix + qa.question) if prefix else qa for qa in asked if qa is not None]
