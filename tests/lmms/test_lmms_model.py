"""The lmms-eval model `vlmq` (vlmq_gptqmodel/lmms), against lmms-eval 0.7.3 as installed by `make test`.

End to end and offline: a few held-out synthetic-world questions are written as a local dataset with a task YAML,
lmms-eval runs them on the shipped synthvlm, and its exact-match score must equal the project's own scorer
(`vlmq eval`'s `evaluate`) question by question. The scorer is teacher-forced, so the two agree exactly when
greedy generation with the same prompt produces the gold answer and stops.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from lmms_eval.models.registry_v2 import ModelRegistryV2

from vlmq_gptqmodel.errors import BadInput
from vlmq_gptqmodel.lmms import MODEL_NAME
from vlmq_gptqmodel.lmms.model import VLMQ, choose_kernels
from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir
from vlmq_gptqmodel.synth.evaluation import (
    eval_samples, evaluate, load_for_eval, processor_image_size, questions_of, synthvlm_dir, world_of,
)
from vlmq_gptqmodel.synth.world import calibration_conversations

ROOT = Path(__file__).resolve().parents[2]
TASK = "vlmq_synth_vqa"
# 6 images of the eval split, 21 questions; with this seed the FP model misses 2 of them, so the comparison
# covers wrong answers too (checked in the fixture)
N_IMAGES, SEED = 6, 7

TASK_UTILS = '''
def doc_to_visual(doc):
    return [doc["image"]]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    # no normalisation: the generated text must be the gold answer itself
    return {"exact_match": float(results[0] == doc["answer"])}
'''

TASK_YAML = '''
task: {task}
dataset_path: {dataset}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
'''


def write_task(root: Path, questions) -> Path:
    """A local lmms-eval task over `questions`: a save_to_disk dataset, its YAML and utils; returns its folder."""
    rows = {"image": [q.image for q in questions], "question": [q.qa.question for q in questions],
            "answer": [q.qa.answer for q in questions], "kind": [q.qa.kind for q in questions]}
    dataset = root / "dataset"
    DatasetDict({"test": Dataset.from_dict(rows).cast_column("image", ImageFeature())}).save_to_disk(str(dataset))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(textwrap.dedent(TASK_UTILS))
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, dataset=dataset))
    return tasks


@pytest.fixture(scope="module")
def synth_task(tmp_path_factory):
    """(task folder, the FP model's EvalResult on the same questions): what `vlmq eval` reports."""
    model, processor = load_for_eval(synthvlm_dir())
    samples = eval_samples(N_IMAGES, SEED, image_size=processor_image_size(processor), world=world_of(model))
    expected = evaluate(model, processor, samples)
    assert 0 < sum(expected.correct) < len(expected.correct), "pick a seed with both hits and misses"
    return write_task(tmp_path_factory.mktemp("synth_task"), questions_of(samples)), expected


@pytest.fixture(scope="module")
def egg_info(tmp_path_factory):
    """setup.py's metadata, built from this checkout (not whatever copy of the package is installed)."""
    base = tmp_path_factory.mktemp("egg")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(base)], cwd=ROOT, check=True,
                   capture_output=True)
    return base


def test_lmms_eval_stays_optional():
    """Neither the package nor the entry-point module imports lmms-eval; only lmms-eval's call does."""
    code = "import sys, vlmq_gptqmodel, vlmq_gptqmodel.lmms; print('lmms_eval' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_setup_py_registers_vlmq_with_lmms_eval(egg_info, monkeypatch):
    """lmms-eval's own entry-point loading, over this checkout's metadata, resolves `vlmq` to the chat class."""
    declared = (egg_info / "vlmq_gptqmodel.egg-info" / "entry_points.txt").read_text()
    assert "[lmms_eval.models]\nvlmq = vlmq_gptqmodel.lmms:manifest" in declared
    monkeypatch.syspath_prepend(str(egg_info))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.resolve(MODEL_NAME).model_type == "chat"
    assert registry.get_model_class(MODEL_NAME) is VLMQ


@pytest.mark.parametrize("kernels,quantized,device,loader", [
    ("auto", False, "cpu", "transformers"), ("auto", False, "cuda", "transformers"),
    ("auto", True, "cpu", "gptqmodel"), ("auto", True, "cuda", "vlmq"),
    ("gptqmodel", True, "cpu", "gptqmodel"), ("gptqmodel", True, "cuda", "gptqmodel"),
    ("vlmq", True, "cuda", "vlmq"),
])
def test_kernel_choice(kernels, quantized, device, loader):
    assert choose_kernels(kernels, quantized, torch.device(device)) == loader


@pytest.mark.parametrize("kernels,quantized,device,message", [
    ("vlmq", True, "cpu", "kernels=vlmq needs a CUDA GPU"),
    ("gptqmodel", False, "cpu", "applies to GPTQ checkpoints"),
    ("vlmq", False, "cuda", "applies to GPTQ checkpoints"),
    ("marlin", True, "cuda", "choose one of auto, gptqmodel, vlmq"),
])
def test_kernel_choice_refusals(kernels, quantized, device, message):
    with pytest.raises(BadInput, match=message):
        choose_kernels(kernels, quantized, torch.device(device))


@pytest.mark.parametrize("model_args,message", [
    ({}, "needs a model directory"),
    ({"pretrained": "/nonexistent/model"}, "pretrained /nonexistent/model has no config.json"),
    ({"pretrained": "x", "backend": "marlin"}, r"unknown model_args \['backend'\]"),
    ({"pretrained": "x", "batch_size": "auto"}, "takes a positive integer"),
    ({"pretrained": "x", "batch_size": 0}, "takes a positive integer"),
])
def test_bad_model_args_are_refused_in_one_line(model_args, message):
    with pytest.raises(BadInput, match=message) as refused:
        VLMQ(**model_args)
    assert "\n" not in str(refused.value)


def test_loglikelihood_is_refused_with_the_reason():
    with pytest.raises(NotImplementedError, match="generate_until only"):
        VLMQ.loglikelihood(object.__new__(VLMQ), [])


def per_question(samples_file: Path) -> list:
    docs = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    return [doc["exact_match"] == 1.0 for doc in docs]


@pytest.mark.slow
def test_lmms_eval_cli_scores_the_full_precision_model_like_vlmq_eval(synth_task, egg_info, tmp_path):
    """`lmms-eval --model vlmq` as a user runs it (the CLI, the entry point, the local task), offline."""
    tasks, expected = synth_task
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(egg_info), str(ROOT)]), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "vlmq", "--model_args", f"pretrained={synthvlm_dir()}",
         "--tasks", TASK, "--include_path", str(tasks), "--device", "cpu", "--batch_size", "32",
         "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = out.rglob("*_results.json")
    (samples_file,) = out.rglob(f"*_samples_{TASK}.jsonl")
    reported = json.loads(results_file.read_text())["results"][TASK]["exact_match,none"]
    assert per_question(samples_file) == expected.correct
    assert reported == pytest.approx(expected.accuracy, abs=1e-12)


@pytest.mark.slow
def test_a_gptq_checkpoint_is_scored_like_vlmq_eval_with_gptqmodels_kernels(synth_task, tmp_path):
    """A W4 GPTQ checkpoint of synthvlm, loaded by GPTQModel (TorchLinear on CPU, bf16) on both sides; lmms-eval's
    evaluator is called with the model object here (the CLI test above covers the name)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    tasks, _ = synth_task
    checkpoint = tmp_path / "w4"
    size = processor_image_size(load_for_eval(synthvlm_dir())[1])
    quantize_to_dir(synthvlm_dir(), calibration_conversations(8, seed=0, image_size=size), checkpoint,
                    QuantSpec(bits=4, group_size=128), "gptq")
    model, processor = load_for_eval(checkpoint)
    expected = evaluate(model, processor, eval_samples(N_IMAGES, SEED, image_size=size, world=world_of(model)))
    del model
    lm = VLMQ(pretrained=str(checkpoint), device="cpu", batch_size=32)  # kernels=auto: GPTQModel's on CPU
    assert lm.loader == "gptqmodel" and lm.model.dtype == torch.bfloat16
    # the task index without lmms-eval's own tasks: indexing those takes half a minute here
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["exact_match"] == 1.0 for s in samples] == expected.correct
    assert results["results"][TASK]["exact_match,none"] == pytest.approx(expected.accuracy, abs=1e-12)
