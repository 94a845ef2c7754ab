"""``python -m training {dsm,classifier} ...``: the training commands. ``--help`` on each lists its options."""
from __future__ import annotations

import argparse
import logging
import sys

from fair_core.errors import FairSamplingError

from . import classifier, dsm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (dsm, classifier):
        module.add_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded as the run's command line
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except FairSamplingError as e:
        parser.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
