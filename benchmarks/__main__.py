"""``python -m benchmarks``: the same as ``dpdistill-bench``."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":  # importing this module (a wheel check does) runs nothing
    sys.exit(main())
