"""Compare the runs of a sweep: ``python compare.py <multirun dir>`` (writes compare.md/.csv and plots there)."""

import sys

from vdmlab.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
