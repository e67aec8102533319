"""One entry point for every run mode, configured by gin (T5X's `main.py` shape).

    python -m medpalm.main --run_mode=train \
        --gin_file=gin_configs/experiments/multimedbench_12b.gin --gin.MODEL_DIR="'/tmp/run'" \
        [--gin.TRAIN_STEPS=100] [--gin_bindings='...']

`--gin.NAME=VALUE` binds a macro or parameter (`--gin.MODEL_DIR="'/tmp/x'"` is the binding
`MODEL_DIR = '/tmp/x'`; strings need their quotes). Run modes call `train.train`,
`eval.evaluate` or `infer.infer` with every argument from gin. Multi-host: pass
`--coordinator_address`, `--num_processes`, `--process_id` (or let `jax.distributed.initialize`
find them on Cloud TPU / SLURM with `--multiprocess`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

RUN_MODES = ("train", "eval", "infer")
GIN_SEARCH_PATHS = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_mode", choices=RUN_MODES, required=True)
  parser.add_argument(
      "--gin_file",
      action="append",
      default=[],
      help="gin file (repeatable), absolute or relative to the repository",
  )
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--gin_search_paths", action="append", default=[])
  parser.add_argument(
      "--multiprocess",
      action="store_true",
      help="call jax.distributed.initialize() (auto-detects TPU / SLURM)",
  )
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args, rest = parser.parse_known_args(argv)
  for item in rest:
    if not item.startswith("--gin.") or "=" not in item:
      parser.error(f"unrecognized argument {item!r} (gin bindings are --gin.NAME=VALUE)")
    name, value = item[len("--gin.") :].split("=", 1)
    args.gin_bindings.append(f"{name} = {value}")
  if not args.gin_file:
    parser.error("at least one --gin_file is required")
  return args


def parse_gin(files, bindings, search_paths=()) -> None:
  """Parses and finalizes gin; errors name the file / binding at fault."""
  import gin

  for path in (*search_paths, *GIN_SEARCH_PATHS, os.getcwd()):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)


def initialize_distributed(args) -> None:
  import jax

  if args.coordinator_address or args.num_processes:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id
    )
  elif args.multiprocess:
    jax.distributed.initialize()


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("medpalm").setLevel(logging.INFO)
  # absl carries seqio's per-task "uncached FunctionDataset" advice: one line per task and run.
  logging.getLogger("absl").setLevel(logging.ERROR)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from medpalm.driver import cpu_env

  # Before JAX's backend starts: XLA reads XLA_FLAGS once. A no-op for TPU / GPU runs. The
  # allocator setting is process-wide, so only the program's entry point (below) makes it.
  if cpu_env.configure(allocator=False):
    logging.getLogger("medpalm").info(cpu_env.describe())
  initialize_distributed(args)
  import gin
  from medpalm.driver import eval as eval_lib  # noqa: F401  (registers configurables for gin)
  from medpalm.driver import infer as infer_lib
  from medpalm.driver import train as train_lib

  parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
  from medpalm import partitioning  # refuse to train on the CPU when a GPU / TPU was asked for

  partitioning.check_platform(partitioning.requested_platform())
  fn = {"train": train_lib.train, "eval": eval_lib.evaluate, "infer": infer_lib.infer}
  gin.get_configurable(fn[args.run_mode])()
  return 0


if __name__ == "__main__":
  from medpalm.driver import cpu_env

  cpu_env.configure()
  sys.exit(main())
