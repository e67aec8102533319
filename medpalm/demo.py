"""The demo: the whole pipeline on this machine's CPU, in minutes.

    make demo                      # = launch/demo.sh = python -m medpalm.demo
    python -m medpalm.demo --output demo_output --steps 1000

1. writes the synthetic MultiMedBench datasets in their official formats (`tasks.demo_data`),
   prepares their images and trains a small SentencePiece vocabulary;
2. trains the tiny Med-PaLM M on the `multimedbench_demo` mixture with the real driver
   (`gin_configs/experiments/demo_cpu.gin`: 2×2×2 fake-CPU mesh, orbax checkpoints, periodic
   loss on a validation split, TensorBoard events) — resumable: rerun to continue;
3. evaluates the latest checkpoint on every demo task's test split through `seqio.Evaluator`, and
   the learnable image task (VQA-RAD: "is the lesion left or right / in the upper half?", answered
   only by the image) with its images and with blanked images;
4. writes `<output>/metrics.json` ({task: {metric: value}}) and `<output>/report.md`.

Images are 56×56 (16 image tokens) instead of 224×224 (256) so that a CPU trains in minutes;
everything else is the full-size code path.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medpalm.driver import cpu_env  # noqa: E402

cpu_env.configure()  # the driver's CPU flags and allocator setting, before JAX's backend starts

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE_TASK = "multimedbench_vqa_rad"
IMAGE_SIZE = 56
PATCH = 14
TARGETS_LENGTH = 16  # target tokens trained on and decoded
VQA_RATE = 3.0  # the VQA tasks' mixture rate in the demo (the other tasks: 1)
# Evaluated besides the image task, one of each kind (within the demo's CPU budget; --eval_tasks
# all evaluates every task): QA, VQA, report generation, rank-classified dermatology, genomics.
EVAL_TASKS = tuple(
    f"multimedbench_{t}"
    for t in ("medqa", "slake", "path_vqa", "mimic_cxr_report", "pad_ufes_20", "precisionfda")
)
SYNTHETIC_NOTE = (
    "**Synthetic data.** Every dataset here is a synthetic fixture written by "
    "`tasks/demo_data.py` in the official formats; the numbers below measure this pipeline on "
    "those fixtures and are **not comparable to the paper's** (shown beside them for reference "
    "only). Tasks the demo does not evaluate are left out."
)


def _say(message: str) -> None:
  print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(output: pathlib.Path, num_examples: int) -> dict[str, str]:
  """Synthetic data + prepared images + vocabulary (skipped when already there)."""
  from tasks import demo_data, prepare as prepare_lib, vocab

  data, prepared, spm = output / "data", output / "prepared", output / "spm" / "medpalm"
  marker = output / "data.ready"
  if not marker.exists():
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(prepared, ignore_errors=True)
    _say(f"writing synthetic datasets ({num_examples} examples per split) to {data}")
    demo_data.write_all(data, num_examples=num_examples, seed=0)
    _say("preparing images")
    prepare_lib.prepare(
        data_dir=str(data), prepared_dir=str(prepared), image_size=IMAGE_SIZE, progress_bar=False
    )
    _say("training the SentencePiece vocabulary")
    vocab.train_sentencepiece(spm, vocab.corpus_from_data(data), vocab_size=1000)
    marker.write_text("ok")
  return {
      "MEDPALM_DATA_DIR": str(data),
      "MEDPALM_PREPARED_DIR": str(prepared),
      "MEDPALM_SPM_MODEL": str(spm) + ".model",
  }


def register_tasks(env: dict[str, str]) -> None:
  """The 14 tasks and mixtures at the demo's image size (replacing `import tasks`' defaults)."""
  os.environ.update(env)
  import tasks  # noqa: F401  (registers the defaults first; we replace them)
  from tasks import multimedbench, vocab

  multimedbench.register_all(
      vocabulary=vocab.get_vocabulary(env["MEDPALM_SPM_MODEL"]),
      num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
      image_size=IMAGE_SIZE,
      data_dir=env["MEDPALM_DATA_DIR"],
      prepared_dir=env["MEDPALM_PREPARED_DIR"],
      shuffle_buffer_size=256,
  )
  # The demo's mixture trains the three VQA tasks, whose synthetic questions ask where the lesion
  # is in the image, at VQA_RATE times the rate of the others: within the CPU budget of 1000
  # steps the image task then learns to read its images (at equal rates it needs about 2000).
  import seqio

  name = "multimedbench_demo"
  demo = [t.name for t in seqio.get_mixture_or_task(name).tasks]
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, [(t, VQA_RATE if "vqa" in t or "slake" in t else 1.0) for t in demo]
  )


def bindings(model_dir: pathlib.Path, args) -> list[str]:
  return [
      f"MODEL_DIR = '{model_dir}'",
      f"TRAIN_STEPS = {args.steps}",
      f"IMAGE_SIZE = {IMAGE_SIZE}",
      f"BATCH_SIZE = {args.batch_size}",
      # `import tasks` would re-register at 224 px: the demo registered its tasks already.
      "MIXTURE_OR_TASK_MODULE = None",
  ]


def blank_images_task(name: str) -> str:
  """A copy of task `name` whose images are all zero (what the model sees without images)."""
  import seqio
  import tensorflow as tf

  task = seqio.get_mixture_or_task(name)
  blank = f"{name}_blank_images"

  def zero(ds):
    return ds.map(lambda ex: {**ex, "images": tf.zeros_like(ex["images"])})

  seqio.TaskRegistry.remove(blank)
  seqio.TaskRegistry.add(
      blank,
      source=task.source,
      preprocessors=list(task.preprocessors) + [zero],
      output_features=task.output_features,
      postprocess_fn=task.postprocessor,
      metric_fns=[exact_match],
  )
  return blank


def exact_match(targets, predictions) -> dict[str, float]:
  """Percent of predictions equal to the answer (targets are the task's {"answer": ...} mapping
  or plain text, both postprocessed like the prediction)."""
  import numpy as np

  answer = lambda t: t.get("answer") if isinstance(t, dict) else t
  return {
      "accuracy": 100.0 * float(np.mean([answer(t) == p for t, p in zip(targets, predictions)]))
  }


def evaluate(model_dir: pathlib.Path, output: pathlib.Path, args) -> dict:
  """Inference metrics of the latest checkpoint: every demo task's test split, plus the image
  task with and without its images."""
  import gin
  import seqio
  from medpalm.driver import checkpoints, data, eval as eval_lib, main as main_lib
  from medpalm.evaluation import report
  from medpalm.model import MedPalmMModel
  from medpalm.partitioning import Partitioner

  gin.clear_config()
  main_lib.parse_gin(
      [str(REPO / "gin_configs" / "experiments" / "demo_cpu.gin")], bindings(model_dir, args)
  )
  model = gin.get_configurable(MedPalmMModel)()
  partitioner = gin.get_configurable(Partitioner)()
  # Decode as many tokens as training saw targets: the model never learned to write past them,
  # and each decoded position costs a step of every evaluation batch.
  lengths = {"inputs": args.inputs_length, "targets": TARGETS_LENGTH, "images": 1, "image_mask": 1}
  image_task = seqio.get_mixture_or_task(IMAGE_TASK)
  seqio.TaskRegistry.remove(IMAGE_TASK)  # the image task's answer is scored by exact match
  seqio.TaskRegistry.add(
      IMAGE_TASK,
      source=image_task.source,
      preprocessors=image_task.preprocessors,
      output_features=image_task.output_features,
      postprocess_fn=image_task.postprocessor,
      metric_fns=[exact_match],
  )
  blank = blank_images_task(IMAGE_TASK)
  if args.eval_tasks == "all":
    others = [
        t.name
        for t in seqio.get_mixture_or_task("multimedbench_demo").tasks
        if t.name != IMAGE_TASK
    ]
  else:
    others = [t for t in args.eval_tasks.split(",") if t]
  names = [IMAGE_TASK, blank] + others
  cfg = data.DatasetConfig(
      mixture_or_task_name=IMAGE_TASK,
      task_feature_lengths=lengths,
      split="test",
      batch_size=args.batch_size,
      shuffle=False,
      seed=0,
  )
  params, step, axes = eval_lib.restore_params(
      model, checkpoints.RestoreCheckpointConfig(path=str(model_dir)), partitioner, cfg
  )
  results = {}
  for name in names:
    task_cfg = data.DatasetConfig(**{**cfg.__dict__, "mixture_or_task_name": name})
    examples = args.eval_examples if name in (IMAGE_TASK, blank) else args.other_examples
    evaluator = eval_lib.make_evaluator(
        task_cfg,
        model,
        partitioner,
        axes,
        output_dir=str(output / "results"),
        num_examples=examples,
    )
    if not evaluator.eval_tasks:
      continue
    try:
      task_results = evaluator.evaluate(params, step)
    except Exception as e:  # one task's metric failing must not hide the others
      if name in (IMAGE_TASK, blank):
        raise
      results[name] = {"error": f"{type(e).__name__}: {e}"}
      _say(f"eval {name} failed: {results[name]['error']}")
      continue
    for task, values in task_results.items():
      results[task] = {k: report.json_value(v) for k, v in values.items()}
      _say(f"eval {task}: {results[task]}")
  gin.clear_config()
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="demo_output")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--num_examples", type=int, default=256)
  parser.add_argument("--inputs_length", type=int, default=256)
  parser.add_argument(
      "--eval_examples", type=int, default=64, help="test examples of the image task (and blanked)"
  )
  parser.add_argument(
      "--other_examples", type=int, default=16, help="test examples of every other task"
  )
  parser.add_argument(
      "--eval_tasks",
      default=",".join(EVAL_TASKS),
      help="comma-separated tasks to evaluate besides the image task, or 'all' (every task "
      "of multimedbench_demo; about 15 s each on 2 cores)",
  )
  parser.add_argument(
      "--min_image_accuracy",
      type=float,
      default=None,
      help="exit 1 when the image task ends below this accuracy (percent)",
  )
  args = parser.parse_args(argv)
  output = pathlib.Path(args.output).resolve()
  output.mkdir(parents=True, exist_ok=True)
  start = time.time()
  env = prepare(output, args.num_examples)
  register_tasks(env)

  import gin
  from medpalm.driver import main as main_lib
  from medpalm.evaluation import report

  model_dir = output / "run"
  _say(f"training {args.steps} steps (checkpoints in {model_dir}; rerun to resume)")
  gin.clear_config()
  extra = bindings(model_dir, args) + [
      f"TASK_FEATURE_LENGTHS = {{'inputs': {args.inputs_length}, 'targets': {TARGETS_LENGTH}, "
      f"'images': 1, 'image_mask': 1}}",
      f"LOSS_POSITIONS = {TARGETS_LENGTH}",
  ]
  main_lib.main(
      [
          "--run_mode=train",
          f"--gin_file={REPO / 'gin_configs' / 'experiments' / 'demo_cpu.gin'}",
          *[f"--gin_bindings={b}" for b in extra],
      ]
  )
  _say("evaluating")
  results = evaluate(model_dir, output, args)
  blank = f"{IMAGE_TASK}_blank_images"
  summary = {
      "image_task": IMAGE_TASK,
      "accuracy_with_images": results.get(IMAGE_TASK, {}).get("accuracy"),
      "accuracy_blank_images": results.get(blank, {}).get("accuracy"),
      "chance": 50.0,
  }
  (output / "metrics.json").write_text(json.dumps({**results, "summary": summary}, indent=1))
  loaded = report.load_results(str(output / "results"))
  text = report.render_markdown(loaded, scored_only=True, table_note=SYNTHETIC_NOTE)
  text = (
      f"# medpalm demo\n\n{SYNTHETIC_NOTE}\n\nImage task {IMAGE_TASK}: accuracy "
      f"{summary['accuracy_with_images']:.1f} % with images, "
      f"{summary['accuracy_blank_images']:.1f} % with blanked images (chance 50 %), after "
      f"{args.steps} steps ({(time.time() - start) / 60:.1f} min on this machine).\n\n" + text
  )
  (output / "report.md").write_text(text)
  _say(
      f"image task {IMAGE_TASK}: {summary['accuracy_with_images']:.1f} % with images, "
      f"{summary['accuracy_blank_images']:.1f} % blanked (chance 50 %)"
  )
  _say(
      f"wrote {output / 'metrics.json'} and {output / 'report.md'} in "
      f"{(time.time() - start) / 60:.1f} min"
  )
  if (
      args.min_image_accuracy is not None
      and (summary["accuracy_with_images"] or 0) < args.min_image_accuracy
  ):
    print(f"image task accuracy below {args.min_image_accuracy} %", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
