r"""One entry point for every run mode, configured by gin, with T5X's command-line flags.

    python -m medpalm.main --run_mode=train \
        --gin_file=gin_configs/experiments/multimedbench_12b.gin --gin.MODEL_DIR="'gs://B/run'" \
        [--gin.TRAIN_STEPS=100] [--gin_bindings='...'] [--gin_search_paths=DIR,DIR]

`--gin.NAME=VALUE` binds a macro or parameter (`--gin.MODEL_DIR="'/tmp/x'"` is the binding
`MODEL_DIR = '/tmp/x'`; strings need their quotes), as T5X's `gin_utils.run` rewrites it. Run
modes call `train.train`, `eval.evaluate` or `infer.infer` with every argument from gin.
Multi-host: T5X's `--multiprocess_gpu`, `--coordinator_address`, `--process_count`,
`--process_index` (with an address or a count, `jax.distributed.initialize` gets them; with
`--multiprocess_gpu` alone or `--multiprocess` it finds them itself on Cloud TPU / SLURM).
`--help` lists these flags, `--helpfull` every flag (absl's).
"""

from __future__ import annotations

import logging
import os
import sys
import types

from absl import flags

RUN_MODES = ("train", "eval", "infer")
GIN_SEARCH_PATHS = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),)

FLAGS = flags.FLAGS
_FLAG_NAMES = (
    "run_mode",
    "gin_file",
    "gin_bindings",
    "gin_search_paths",
    "multiprocess",
    "multiprocess_gpu",
    "coordinator_address",
    "process_count",
    "process_index",
)
if "run_mode" not in FLAGS:  # defined once per process, whoever imports this module first
  flags.DEFINE_enum("run_mode", None, RUN_MODES, "What to run.")
  flags.DEFINE_multi_string(
      "gin_file", [], "gin file (repeatable), absolute or relative to a gin search path"
  )
  flags.DEFINE_multi_string("gin_bindings", [], "gin bindings (repeatable); or --gin.NAME=VALUE")
  flags.DEFINE_list(
      "gin_search_paths", [], "comma-separated directories searched for gin files and includes"
  )
  flags.DEFINE_bool(
      "multiprocess", False, "call jax.distributed.initialize() (auto-detects Cloud TPU / SLURM)"
  )
  flags.DEFINE_bool(
      "multiprocess_gpu", False, "initialize JAX's distributed system for multi-host GPUs"
  )
  flags.DEFINE_string("coordinator_address", None, "IP:port of process 0's coordinator")
  flags.DEFINE_integer("process_count", None, "number of JAX processes")
  flags.DEFINE_integer("process_index", None, "this process's index")


def rewrite_gin_args(argv) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (what T5X's gin_utils does)."""
  out = []
  for item in argv:
    if item.startswith("--gin.") and "=" in item:
      name, value = item[len("--gin.") :].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(item)
  return out


def _help(full: bool) -> str:
  module = sys.modules[__name__]
  body = FLAGS.get_help() if full else FLAGS.module_help(module)
  return __doc__ + "\n" + body


def parse_args(argv) -> types.SimpleNamespace:
  """The flags of `argv` (program name excluded); SystemExit with the reason on bad flags."""
  FLAGS.unparse_flags()
  try:
    FLAGS(["medpalm.main", *rewrite_gin_args(argv)], known_only=False)
  except flags.Error as e:
    raise SystemExit(f"medpalm.main: {e}\nTry --help.") from None
  args = types.SimpleNamespace(**{name: FLAGS[name].value for name in _FLAG_NAMES})
  args.gin_file, args.gin_bindings = list(args.gin_file), list(args.gin_bindings)
  if args.run_mode is None:
    raise SystemExit(f"medpalm.main: --run_mode is required ({', '.join(RUN_MODES)})")
  if not args.gin_file:
    raise SystemExit("medpalm.main: at least one --gin_file is required")
  return args


def parse_gin(files, bindings, search_paths=()) -> None:
  """Parses and finalizes gin; errors name the file / binding at fault."""
  import gin

  for path in (*search_paths, *GIN_SEARCH_PATHS, os.getcwd()):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)


def initialize_distributed(args) -> None:
  import jax

  if args.coordinator_address or args.process_count:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        args.coordinator_address, num_processes=args.process_count, process_id=args.process_index
    )
  elif args.multiprocess or args.multiprocess_gpu:
    jax.distributed.initialize()


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--helpfull" in argv or "--help" in argv or "-h" in argv:
    print(_help(full="--helpfull" in argv))
    return 0
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("medpalm").setLevel(logging.INFO)
  # absl carries SeqIO's warnings (e.g. a task left out of an evaluation): keep them visible.
  logging.getLogger("absl").setLevel(logging.WARNING)
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
