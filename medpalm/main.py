"""`python -m medpalm.main`: the one command for every run mode (see `medpalm.driver.main`)."""

import sys

from medpalm.driver import cpu_env
from medpalm.driver.main import main

if __name__ == "__main__":
  cpu_env.configure()  # CPU runs: XLA flags and glibc's allocator setting (a no-op on TPU / GPU)
  sys.exit(main())
