"""One prepared GPU proof: every GPU figure of the project, measured in one time-boxed run.

    python benchmarks/gpu_proof run [--smoke] [--data DIR] [--out DIR] [--train-budget-s S]
                                    [--budget-s S | --deadline T] [--max-epochs N] [--work DIR]
    python benchmarks/gpu_proof wheels DIR [--report FILE]   # the wheels of DIR this machine lacks
    python benchmarks/gpu_proof pack SRC DEST                # a PNG slice folder, lossless and small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if Path(sys.path[0] or ".").resolve() == HERE:  # run as `python benchmarks/gpu_proof`
    sys.path[0] = str(HERE.parent)  # the package and benchmarks/bench_*.py, not this folder's files, are importable

from gpu_proof.driver import run  # noqa: E402
from gpu_proof.slices import pack  # noqa: E402
from gpu_proof.wheels import wheels_to_install  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """The `run`, `wheels` and `pack` commands.

    Args:
        argv: the command line (default sys.argv[1:]).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="every stage; writes OUT/gpu_proof.json")
    run_parser.add_argument("--smoke", action="store_true", help="CPU, tiny synthetic data and sizes (minutes)")
    run_parser.add_argument("--data", type=Path, default=None,
                            help="the real slices: a PNG folder or a `pack` of one (default: .data/figshare-png256-j2k, "
                                 "ignored with --smoke)")
    run_parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else benchmarks/results)")
    run_parser.add_argument("--train-budget-s", type=float, default=240.0, help="wall seconds for paper_run training")
    run_parser.add_argument("--max-epochs", type=int, default=None, help="epoch cap (default: the paper preset's)")
    run_parser.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for the whole run")
    run_parser.add_argument("--deadline", type=float, default=None, help="absolute end (epoch seconds), instead of --budget-s")
    run_parser.add_argument("--started", type=float, default=None, help="when the shell script started (epoch seconds)")
    run_parser.add_argument("--install-report", type=Path, default=None, help="JSON written by `wheels --report`")
    run_parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one, removed)")
    wheels_parser = commands.add_parser("wheels", help="print the wheels of DIR whose package is missing or off its range")
    wheels_parser.add_argument("dir", type=Path)
    wheels_parser.add_argument("--report", type=Path, default=None, help="write the decision per wheel as JSON")
    pack_parser = commands.add_parser("pack", help="copy a PNG slice folder with the images as lossless JPEG 2000")
    pack_parser.add_argument("src", type=Path)
    pack_parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "wheels":
        for path in wheels_to_install(args.dir, args.report):
            print(path)
        return 0
    if args.command == "pack":
        info = pack(args.src, args.dest)
        print(f"packed {info['count']} slices into {args.dest}: {info['bytes'] / 2**20:.1f} MiB "
              f"(source {info['source_bytes'] / 2**20:.1f} MiB)")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
