"""The lmms-eval 0.7.3 chat model behind `--model vlmq` (registered by `vlmq_gptqmodel.lmms.manifest`).

    lmms-eval --model vlmq --model_args pretrained=DIR,kernels=auto --tasks mme --batch_size 8

`pretrained` is a local directory: a GPTQ checkpoint, loaded by GPTQModel (`kernels=gptqmodel`: its own
kernel choice; `kernels=vlmq`: the project's Triton kernels through `vlmq_gptqmodel.serving.load_quantized`,
CUDA only; `kernels=auto`: the Triton kernels on a CUDA GPU where they run, GPTQModel's otherwise), or a
full-precision model, loaded by transformers. Each document's chat messages (lmms-eval hands a chat model
the images and text in the task's order) go through the processor's chat template with the generation
prompt, the way `vlmq eval` builds its prompts, and the model generates with the task's settings (greedy
unless the task asks for sampling). Only `generate_until` is implemented: every benchmark of the paper
(MME, MMMU, ScienceQA, TextVQA, VizWiz, SEED-Bench, ChartQA, OCRBench) is a generate_until task.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from lmms_eval import evaluator
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from PIL import Image
from tqdm import tqdm

from ..errors import BadInput
from ..model_dir import check_model_dir, is_quantized

log = logging.getLogger("vlmq_gptqmodel")

KERNELS = ("auto", "gptqmodel", "vlmq")
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_NEW_TOKENS = 128  # what lmms-eval 0.7.3's own Qwen-VL models use when a task sets none
# generation settings a task YAML may give that this model applies (`until` is applied to the text);
# the paper's tasks also carry LLaVA-only ones (image_aspect_ratio), which are skipped with a warning
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "num_beams", "do_sample")


def choose_kernels(kernels: str, quantized: bool, device: torch.device) -> str:
    """Which loader serves the model: "transformers" (full precision), "gptqmodel" or "vlmq"."""
    if kernels not in KERNELS:
        raise BadInput(f"kernels={kernels!r}: choose one of {', '.join(KERNELS)}.")
    if not quantized:
        if kernels != "auto":
            raise BadInput(f"kernels={kernels} applies to GPTQ checkpoints, and pretrained is a full-precision model "
                           "(loaded with transformers): leave kernels out.")
        return "transformers"
    if kernels == "vlmq" and device.type != "cuda":
        raise BadInput(f"kernels=vlmq needs a CUDA GPU (the project's Triton kernels); on {device} use "
                       "kernels=gptqmodel or kernels=auto.")
    if kernels == "auto":
        return "vlmq" if device.type == "cuda" else "gptqmodel"
    return kernels


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BadInput(f"device={device!r} is not a torch device ({e}); pass e.g. cpu or cuda:0.") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device={device} but torch sees no CUDA GPU on this machine; pass --device cpu.")
    return resolved


def parse_batch_size(value) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1 or str(value).strip() != str(size):
        raise BadInput(f"batch_size={value!r}: the vlmq model takes a positive integer (no 'auto').")
    return size


def skip_lmms_eval_filelock_patch() -> None:
    """Let lmms-eval 0.7.3's evaluator run beside filelock 4.

    Its simple_evaluate, after building the model and before loading any task, patches filelock 3.x's
    `filelock._api.FileLockMeta` (one shared lock object per file for filelock's and datasets' lock classes, so
    that nested load_dataset calls cannot deadlock). filelock 4, which gptqmodel 7.7.0 requires (>=4.2.4), has no
    `filelock._api`: the patch fails with ModuleNotFoundError and no evaluation can start. The patch has a
    done-flag; setting it skips the patch, and datasets keeps its own locking, as everywhere else in this package.
    """
    patch = getattr(evaluator, "_enable_reentrant_filelocks", None)
    if patch is not None and importlib.util.find_spec("filelock._api") is None:
        patch._patched = True


def load_model(pretrained: Path, kernels: str, dtype: str, device: torch.device):
    """(transformers model, processor, kernels that serve it: "transformers", "gptqmodel" or "vlmq")."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = check_model_dir(pretrained, "pretrained")
    if dtype not in DTYPES:
        raise BadInput(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}.")
    route = choose_kernels(kernels, is_quantized(config, pretrained), device)
    processor = AutoProcessor.from_pretrained(pretrained)
    if route == "transformers":
        # float32 on CPU by default, as `vlmq eval` runs full-precision models there; on a GPU the checkpoint's own
        torch_dtype = torch.float32 if dtype == "auto" and device.type == "cpu" else DTYPES[dtype]
        model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=torch_dtype).to(device)
    elif route == "gptqmodel":
        from gptqmodel import GPTQModel

        model = GPTQModel.load(str(pretrained), device=str(device), dtype=DTYPES[dtype]).model
    else:
        from ..serving import load_quantized

        # kernels=auto falls back to GPTQModel's kernels (with a warning) where ours cannot run, e.g. pre-Ampere
        wrapper = load_quantized(pretrained, device=str(device), fallback=kernels == "auto", dtype=DTYPES[dtype])
        route = "vlmq" if wrapper.vlmq_serving_report is not None else "gptqmodel"
        model = wrapper.model
    return model.eval(), processor, route


class VLMQ(lmms):
    """lmms-eval chat model for GPTQ checkpoints and full-precision models of the families vlmq quantizes."""

    is_simple = False  # a chat model: lmms-eval 0.7.3 passes doc_to_messages in each request

    def __init__(self, pretrained=None, kernels: str = "auto", dtype: str = "auto", device=None, batch_size=1,
                 max_batch_size=None, **unknown) -> None:
        # max_batch_size comes with lmms-eval's batch_size=auto, which is refused (parse_batch_size)
        super().__init__()
        if unknown:
            raise BadInput(f"unknown model_args {sorted(unknown)}; the vlmq model takes pretrained, kernels, dtype.")
        if pretrained is None:
            raise BadInput("the vlmq model needs a model directory: --model_args pretrained=DIR.")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise BadInput("the vlmq model runs in one process; launch lmms-eval without accelerate/torchrun "
                           "data parallelism.")
        self.batch_size = parse_batch_size(batch_size)
        skip_lmms_eval_filelock_patch()
        self._device = resolve_device(device)
        self.model, self.processor, self.loader = load_model(Path(pretrained), kernels, dtype, self._device)
        self.tokenizer = self.processor.tokenizer
        log.info("vlmq lmms-eval model: %s loaded with %s on %s", pretrained, self.loader, self._device)

    @property
    def device(self):
        return self._device

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "the vlmq model implements generate_until only (every benchmark of the paper is a generate_until task); "
            "loglikelihood tasks such as seedbench_ppl are not supported: use their generate_until variant.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the vlmq model answers single-round generate_until tasks only; multi-round "
                                  "tasks are not supported.")

    def generate_until(self, requests) -> list:
        # requests sharing generation settings are batched together (one generate() call takes one setting)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[2], sort_keys=True, default=str), []).append(index)
        answers = [None] * len(requests)
        with tqdm(total=len(requests), desc="vlmq generating") as progress:
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start:start + self.batch_size]
                    for index, text in zip(batch, self._generate([requests[i] for i in batch])):
                        answers[index] = text
                    progress.update(len(batch))
        return answers

    def _chat(self, request) -> tuple[list[dict], list[Image.Image]]:
        """A request's messages in transformers' chat format, and its images in order."""
        _context, doc_to_messages, _gen_kwargs, doc_id, task, split = request.args
        messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
        chat, images = [], []
        for message in messages.messages:
            content = []
            for part in message.content:
                if part.type == "text":
                    content.append({"type": "text", "text": part.text})
                elif part.type == "image":
                    image = part.url if isinstance(part.url, Image.Image) else Image.open(part.url)
                    images.append(image.convert("RGB"))
                    content.append({"type": "image", "image": images[-1]})
                else:
                    raise NotImplementedError(f"task {task} sends {part.type}; the vlmq model takes images and text.")
            chat.append({"role": message.role, "content": content})
        return chat, images

    def _generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        settings = {key: gen_kwargs[key] for key in GENERATION_KEYS if key in gen_kwargs}
        ignored = sorted(set(gen_kwargs) - set(GENERATION_KEYS) - {"until"})
        if ignored:
            log.warning("vlmq lmms-eval model: ignoring generation settings %s", ignored)
        settings.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        temperature = settings.get("temperature") or 0
        settings["do_sample"] = bool(settings.get("do_sample", temperature > 0)) and temperature > 0
        if not settings["do_sample"]:  # greedy: sampling parameters would only draw warnings
            settings.update(temperature=None, top_p=None, top_k=None)
        until = gen_kwargs.get("until") or []
        return settings, [until] if isinstance(until, str) else list(until)

    def _eos_ids(self) -> set:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, (list, tuple)) else {eos}

    @torch.no_grad()
    def _generate(self, requests) -> list[str]:
        settings, until = self._generation_settings(requests[0].args[2])
        chats = [self._chat(request) for request in requests]
        texts = [self.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                 for chat, _ in chats]
        images = [image for _, row_images in chats for image in row_images]
        inputs = self.processor(text=texts, images=images or None, padding=True, padding_side="left",
                                return_tensors="pt").to(self.model.device)
        for key, value in inputs.items():  # pixel values in the model's dtype (half for GPTQ checkpoints)
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.model.dtype)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        output = self.model.generate(**inputs, **settings, pad_token_id=pad)
        eos, prompt_length = self._eos_ids(), inputs["input_ids"].shape[1]
        answers = []
        for row in output[:, prompt_length:].tolist():
            # up to the first end-of-turn token, special tokens kept: an answer that only decodes like the
            # gold one (a stray special token skipped) must not score
            end = next((i for i, token in enumerate(row) if token in eos), len(row))
            text = self.tokenizer.decode(row[:end], skip_special_tokens=False)
            cut = min((text.index(stop) for stop in until if stop and stop in text), default=len(text))
            answers.append(text[:cut])
        return answers
