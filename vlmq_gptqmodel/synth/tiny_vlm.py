"""Small Qwen-VL and LLaVA-OneVision models built locally: word-level tokenizer, processor, config and
random weights.

Nothing here downloads anything. A saved model directory loads with transformers'
`AutoModelForImageTextToText` / `AutoProcessor` and with `GPTQModel.load`, so tests and the synthetic
world's trained model (`assets/synthvlm`) use GPTQModel's own Qwen-VL definitions unchanged (and, for
LLaVA-OneVision, the definition glue/llava_onevision.py registers with GPTQModel).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from ..families import LLAVA_ONEVISION, QWEN_VL

LLAVA_OV = LLAVA_ONEVISION.model_types[0]
SUPPORTED_ARCHS = QWEN_VL.model_types + (LLAVA_OV,)  # the tiny builders make these

PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
# Special tokens take ids 0..7 in this order; the chat roles and then the language's words follow.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
ROLE_WORDS = ("system", "user", "assistant")



def _chat_template(image: str, video: str) -> str:
    """Qwen chat layout (Qwen-VL's, and LLaVA-OneVision's Qwen2 one) without the default system prompt (its
    words are not in the vocabulary). Newlines are kept for readability; the whitespace pre-tokenizer drops them."""
    return (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' or 'image' in item %}}{image}"
        f"{{% elif item['type'] == 'video' or 'video' in item %}}{video}"
        "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


CHAT_TEMPLATE = _chat_template(VISION_START + IMAGE_PAD + VISION_END, VISION_START + VIDEO_PAD + VISION_END)

# LLaVA-OneVision: one `<image>` placeholder in the text, which its processor expands to the image's
# anyres token count (base tile, the tiles of the chosen grid, one image_newline per row).
LLAVA_IMAGE, LLAVA_VIDEO = "<image>", "<video>"
LLAVA_SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, IM_START, IM_END, LLAVA_IMAGE, LLAVA_VIDEO)
LLAVA_CHAT_TEMPLATE = _chat_template(LLAVA_IMAGE, LLAVA_VIDEO)
# SigLIP patch size; a tile of `image_size` px gives (image_size / 14)^2 tokens. The anyres grids are 1x1,
# 1x2, 2x1 and 2x2 tiles (the real model's go up to 6x6 tiles of 384 px), so anyres stays cheap.
LLAVA_PATCH_SIZE = 14
LLAVA_GRID = ((1, 1), (1, 2), (2, 1), (2, 2))

# Shape of the project's synthetic-world VLM (tools/train_synthvlm.py): hidden 256 gives two groups of
# 128 per row; 224 px images give 64 image tokens.
SYNTHVLM_ARCH = "qwen2_vl"
SYNTHVLM_SIZES = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=512, vision_depth=2, vision_hidden=128, vision_heads=4)

# Vision patch size per architecture; every one merges 2x2 patches into one language-model token.
PATCH_SIZE = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2


def _check_arch(arch: str) -> None:
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"arch={arch!r} is not supported; use one of {SUPPORTED_ARCHS}")


def default_image_size(arch: str) -> int:
    """Qwen-VL: smallest square side giving 4 image tokens (2x2 merged patches). LLaVA-OneVision: the
    vision tower's tile side, 2x2 patches (an image then gives 10 to 24 tokens, see llava_image_tokens)."""
    _check_arch(arch)
    if arch == LLAVA_OV:
        return 2 * LLAVA_PATCH_SIZE
    return 2 * PATCH_SIZE[arch] * MERGE_SIZE


def llava_image_tokens(tile: int, height: int, width: int) -> int:
    """Image tokens of a `height` x `width` image in a tiny LLaVA-OneVision with `tile`-px tiles: the base
    tile's tokens, then the chosen grid's tokens with the padding rows/columns removed, one image_newline
    per row (transformers' LlavaOnevisionProcessor arithmetic for grids within anyres_max_9)."""
    from transformers.image_processing_utils import select_best_resolution

    side = tile // LLAVA_PATCH_SIZE
    best_h, best_w = select_best_resolution((height, width), _llava_pinpoints(tile))
    rows, cols = side * best_h // tile, side * best_w // tile
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(round(height * cols / width, 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * rows / height, 7))) // 2)
    return side * side + rows * cols + rows


def full_budget_image_size(arch: str, image_size: int) -> int:
    """Side of the square images that get the whole token budget of a model built with `image_size`:
    that size itself for Qwen-VL (images are resized to it), two tiles for LLaVA-OneVision (the 2x2 grid)."""
    image_tokens_per_image(arch, image_size)
    return 2 * image_size if arch == LLAVA_OV else image_size


def _llava_pinpoints(tile: int) -> list:
    return [[tile * h, tile * w] for h, w in LLAVA_GRID]


def image_tokens_per_image(arch: str, image_size: int) -> int:
    """Image tokens an `image_size` x `image_size` image becomes; rejects sizes that do not tile.
    (LLaVA-OneVision: `image_size` is the tile side; a square image of at least two tiles is counted.)"""
    _check_arch(arch)
    if arch == LLAVA_OV:
        if image_size <= 0 or image_size % LLAVA_PATCH_SIZE:
            raise ValueError(f"image_size={image_size} (the tile side) must be a positive multiple of the patch "
                             f"size {LLAVA_PATCH_SIZE} for {arch}; e.g. {max(1, round(image_size / 14)) * 14}")
        return llava_image_tokens(image_size, 2 * image_size, 2 * image_size)
    tile = PATCH_SIZE[arch] * MERGE_SIZE
    if image_size <= 0 or image_size % tile:
        raise ValueError(
            f"image_size={image_size} must be a positive multiple of {tile} (patch {PATCH_SIZE[arch]} x merge "
            f"{MERGE_SIZE}) for {arch}; e.g. {max(1, round(image_size / tile)) * tile}"
        )
    return (image_size // tile) ** 2


def word_pre_tokenizer():
    """What build_tokenizer's tokenizers call a word: split on whitespace and every punctuation character, so
    "circle?" and "circle ?" tokenize the same way."""
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def build_tokenizer(words, arch: str = "qwen2_vl") -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `words` plus the arch's special tokens (Qwen-VL's, or LLaVA-OneVision's
    `<image>`/`<video>` with Qwen2's chat tokens), with the arch's chat template."""
    _check_arch(arch)
    special = LLAVA_SPECIAL_TOKENS if arch == LLAVA_OV else SPECIAL_TOKENS
    words = list(dict.fromkeys(ROLE_WORDS + tuple(words)))
    clashing = [w for w in words if w in SPECIAL_TOKENS + LLAVA_SPECIAL_TOKENS or any(ch.isspace() for ch in w)]
    if clashing:
        raise ValueError(f"words must not contain whitespace or special tokens; got {clashing[:5]}")
    vocab = {token: i for i, token in enumerate(special + tuple(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = word_pre_tokenizer()
    backend.add_special_tokens(list(special))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=list(special[2:]),
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE if arch == LLAVA_OV else CHAT_TEMPLATE
    return tokenizer


def special_token_ids(tokenizer, arch: str = "qwen2_vl") -> dict[str, int]:
    """The config fields that must agree with `tokenizer`'s ids."""
    _check_arch(arch)
    if arch == LLAVA_OV:
        vision = (("image_token_index", LLAVA_IMAGE), ("video_token_index", LLAVA_VIDEO))
    else:
        vision = (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD),
                  ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in vision + (
        ("eos_token_id", IM_END), ("pad_token_id", PAD_TOKEN), ("bos_token_id", IM_START),
    )}
    missing = [name for name, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks the {arch} special tokens for {missing}; build it with "
                         f"build_tokenizer(words, {arch!r})")
    return ids


def build_processor(tokenizer, arch: str = "qwen2_vl", image_size: int | None = None):
    """The arch's own processor; an `image_size`-square image gives (image_size/(patch*2))^2 image tokens.

    min_pixels = max_pixels = image_size^2, so a square image of any size is resized to image_size
    (non-square images keep their aspect ratio and get about the same number of tokens).
    """
    from transformers import Qwen2VLImageProcessor

    image_size = image_size or default_image_size(arch)
    image_tokens_per_image(arch, image_size)
    if arch == LLAVA_OV:
        return _build_llava_processor(tokenizer, image_size)
    pixels = image_size * image_size
    grid = dict(patch_size=PATCH_SIZE[arch], merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, **grid)
    if arch == "qwen3_vl":
        from transformers import Qwen3VLProcessor as Processor, Qwen3VLVideoProcessor as VideoProcessor
    else:
        from transformers import Qwen2VLVideoProcessor as VideoProcessor
        if arch == "qwen2_vl":
            from transformers import Qwen2VLProcessor as Processor
        else:
            from transformers import Qwen2_5_VLProcessor as Processor
    video_processor = VideoProcessor(size={"shortest_edge": pixels, "longest_edge": pixels}, **grid)
    return Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _build_llava_processor(tokenizer, tile: int):
    """LlavaOnevisionProcessor with `tile`-px tiles and 1x1..2x2 anyres grids; "full" feature selection
    (every patch is a token, as in the released checkpoints)."""
    from transformers import (LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor)

    size = {"height": tile, "width": tile}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_llava_pinpoints(tile))
    return LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(tile // LLAVA_PATCH_SIZE) ** 2, vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE, image_token=LLAVA_IMAGE, video_token=LLAVA_VIDEO,
    )


def tiny_llava_onevision_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    vision_depth: int = 1,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    vision_intermediate: int | None = None,
    max_position_embeddings: int = 2048,
    image_size: int | None = None,
    image_token_index: int,
    video_token_index: int,
    eos_token_id: int,
    pad_token_id: int,
    bos_token_id: int,
    dtype: torch.dtype = torch.float32,
):
    """A LlavaOnevisionConfig (SigLIP tower with `image_size`-px tiles, Qwen2 language model) whose
    placeholder ids match the tokenizer's."""
    from transformers import LlavaOnevisionConfig

    tile = image_size or default_image_size(LLAVA_OV)
    image_tokens_per_image(LLAVA_OV, tile)
    _check_heads(hidden_size, num_attention_heads, num_key_value_heads, vision_hidden, vision_heads)
    text = dict(
        model_type="qwen2", vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id, tie_word_embeddings=False,
    )
    vision = dict(
        model_type="siglip_vision_model", hidden_size=vision_hidden, intermediate_size=vision_intermediate or 4 * vision_hidden,
        num_hidden_layers=vision_depth, num_attention_heads=vision_heads, image_size=tile,
        patch_size=LLAVA_PATCH_SIZE, vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_index=image_token_index,
        video_token_index=video_token_index, image_grid_pinpoints=_llava_pinpoints(tile),
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=False,
    )
    config.dtype = dtype
    return config


def _check_heads(hidden_size, num_attention_heads, num_key_value_heads, vision_hidden, vision_heads) -> None:
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_attention_heads={num_attention_heads}, "
            f"which must be divisible by num_key_value_heads={num_key_value_heads}"
        )
    if vision_hidden % vision_heads:
        raise ValueError(f"vision_hidden={vision_hidden} must be divisible by vision_heads={vision_heads}")


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width), in Qwen's 1:1.5:1.5 proportions."""
    half = head_dim // 2
    if head_dim % 2 or half < 3:
        raise ValueError(f"head_dim={head_dim} must be even and >= 6 for 3-axis M-RoPE")
    spatial = (half - half // 4) // 2
    return [half - 2 * spatial, spatial, spatial]


def tiny_config(
    arch: str,
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    vision_depth: int = 1,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    vision_intermediate: int | None = None,
    max_position_embeddings: int = 2048,
    image_token_id: int,
    video_token_id: int,
    vision_start_token_id: int,
    vision_end_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    bos_token_id: int,
    dtype: torch.dtype = torch.float32,
):
    """A Qwen-VL config of the given sizes whose special-token ids match the tokenizer's
    (LLaVA-OneVision: tiny_llava_onevision_config)."""
    if arch not in QWEN_VL.model_types:
        raise ValueError(f"tiny_config builds {QWEN_VL.model_types}; use tiny_llava_onevision_config for {arch!r}")
    _check_heads(hidden_size, num_attention_heads, num_key_value_heads, vision_hidden, vision_heads)
    head_dim = hidden_size // num_attention_heads
    vision_intermediate = vision_intermediate or 4 * vision_hidden
    text = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)},
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        tie_word_embeddings=False,
    )
    grid = dict(patch_size=PATCH_SIZE[arch], spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    ids = dict(
        image_token_id=image_token_id, video_token_id=video_token_id,
        vision_start_token_id=vision_start_token_id, vision_end_token_id=vision_end_token_id,
    )
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
        if vision_intermediate % vision_hidden:
            raise ValueError(f"qwen2_vl sets its vision MLP by an integer ratio: vision_intermediate="
                             f"{vision_intermediate} must be a multiple of vision_hidden={vision_hidden}")
        vision = dict(depth=vision_depth, embed_dim=vision_hidden, hidden_size=hidden_size, num_heads=vision_heads,
                      mlp_ratio=vision_intermediate // vision_hidden, **grid)
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        # Window attention over 2x2 merged tokens; the last block attends globally.
        vision = dict(depth=vision_depth, hidden_size=vision_hidden, out_hidden_size=hidden_size,
                      intermediate_size=vision_intermediate, num_heads=vision_heads,
                      window_size=2 * PATCH_SIZE[arch] * MERGE_SIZE, fullatt_block_indexes=[vision_depth - 1],
                      **grid)
    else:
        from transformers import Qwen3VLConfig as Config
        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_interleaved"] = True
        vision = dict(depth=vision_depth, hidden_size=vision_hidden, out_hidden_size=hidden_size,
                      intermediate_size=vision_intermediate, num_heads=vision_heads,
                      num_position_embeddings=256, deepstack_visual_indexes=[], **grid)
    config = Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    config.dtype = dtype
    return config


def build_model(config, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Deterministic random init of the VLM for `config`."""
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval()


def greedy_generation_config(tokenizer, arch: str = "qwen2_vl") -> GenerationConfig:
    ids = special_token_ids(tokenizer, arch)
    return GenerationConfig(
        do_sample=False, eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"], max_new_tokens=32,
    )


def save_tiny_vlm(
    out_dir,
    arch: str = "qwen2_vl",
    *,
    seed: int = 0,
    words=None,
    image_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    **sizes,
) -> Path:
    """Save a randomly initialised VLM (a Qwen-VL arch or llava_onevision) with its tokenizer and processor
    to `out_dir`.

    `sizes` are `tiny_config` keywords (hidden_size, num_hidden_layers, ...). `words` defaults to the
    synthetic world's vocabulary; `image_size` defaults to the arch's 4-token size (56 px, 64 for qwen3_vl;
    for llava_onevision it is the tile side, default 28 px).
    """
    if words is None:
        from vlmq_gptqmodel.synth.world import VOCAB as words
    tokenizer = build_tokenizer(words, arch)
    processor = build_processor(tokenizer, arch, image_size)
    ids = special_token_ids(tokenizer, arch)
    if arch == LLAVA_OV:
        config = tiny_llava_onevision_config(len(tokenizer), image_size=image_size, dtype=dtype, **ids, **sizes)
    else:
        config = tiny_config(arch, len(tokenizer), dtype=dtype, **ids, **sizes)
    model = build_model(config, seed=seed, dtype=dtype)
    model.generation_config = greedy_generation_config(tokenizer, arch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
