"""`python -m medpalm.main`: the one command for every run mode (see `medpalm.driver.main`)."""

import sys

from medpalm.driver.main import main

if __name__ == "__main__":
  sys.exit(main())
