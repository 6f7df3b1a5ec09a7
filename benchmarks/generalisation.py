"""``python -m benchmarks.generalisation [--quick]``: see ``benchmarks/bench_generalisation.py``."""

import sys

from benchmarks.bench_generalisation import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
