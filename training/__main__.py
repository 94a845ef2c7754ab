"""``python -m training {dsm,classifier,adp,tiw,dual} ...``: the training commands. ``--help`` on each lists its options."""
from __future__ import annotations

import argparse
import sys

from fair_core.cli import run_command

from . import adp, classifier, dsm, dual, tiw


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (dsm, classifier, adp, tiw, dual):
        module.add_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded as the run's command line
    return run_command(parser, args)


if __name__ == "__main__":
    sys.exit(main())
