"""`python -m medpalm.models --summary`: parameter counts of every named config (no allocation)."""

import argparse

from medpalm.models import configs, medpalm_m


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--summary", action="store_true", help="print parameter counts")
  args = parser.parse_args(argv)
  if not args.summary:
    parser.print_help()
    return
  for name in configs.CONFIGS:
    c = medpalm_m.parameter_counts(configs.get_config(name))
    print(f"{name} decoder={c['decoder']} vision={c['vision']} total={c['total']}")


if __name__ == "__main__":
  main()
