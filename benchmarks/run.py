"""Run the benchmark of benchmarks/README.md: `.venv/bin/python benchmarks/run.py [--big]`."""

import argparse
import sys

from mysqlsync_dagster.tools.bench import run_from_args
from mysqlsync_dagster.tools.cli import add_bench_arguments as add_arguments

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run_from_args(parser.parse_args()))
