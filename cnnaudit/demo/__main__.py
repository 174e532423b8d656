"""``python -m cnnaudit.demo``: the demo's figures, its per-seed robustness table, and its shipped weights.

* ``python -m cnnaudit.demo [table]`` — the README's table: the shipped models on the test images;
* ``python -m cnnaudit.demo seeds --seeds 0-7 --threads 1`` — trains the recipe for each seed and
  prints min / median / max of every audited figure (the README's per-seed table);
* ``python -m cnnaudit.demo train [--out DIR]`` — regenerates the shipped weights (``weights/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cnnaudit.demo.models import SHIPPED, WEIGHTS_DIR, write_shipped
from cnnaudit.demo.robustness import seed_table, shipped_table


def _seed_range(text: str) -> list[int]:
    """``"0-7"`` or ``"0,3,5"`` -> a non-empty list of non-negative seeds."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds takes a range like 0-7 or a list like 0,3,5 of seeds >= 0, got {text!r}")
    return seeds


def _threads(text: str) -> int:
    """A positive thread count."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--threads takes a whole number >= 1, got {text!r}")
    return int(text)


_DESCRIPTION = """\
The demo's figures, its per-seed robustness table and its shipped weights.

  python -m cnnaudit.demo [table]
      the shipped models' figures on the test images (loads the shipped weights; trains nothing)
  python -m cnnaudit.demo seeds --seeds 0-7 --threads 1
      trains the clean and the biased model once per seed (about 45 s each on one CPU thread) and prints
      min / median / max of every audited figure
  python -m cnnaudit.demo train [--out DIR]
      trains the shipped models again and writes their weights and manifest.json

'python -m cnnaudit.demo COMMAND --help' describes a command's options."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnaudit.demo", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("table", help="the shipped models' figures on the test images (the default)")
    seeds = commands.add_parser("seeds", help="train the recipe for several seeds and print the spread of every audited figure")
    seeds.add_argument("--seeds", type=_seed_range, default=list(range(8)), help="seeds to train (default 0-7)")
    seeds.add_argument("--threads", type=_threads, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    train = commands.add_parser("train", help="regenerate the shipped weights")
    train.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"folder to write to (default {WEIGHTS_DIR})")
    train.add_argument("--threads", type=_threads, default=1, help="torch threads used for training (default 1)")
    args = parser.parse_args(argv)

    if args.command == "seeds":
        torch.set_num_threads(args.threads)
        print(seed_table(args.seeds))
    elif args.command == "train":
        torch.set_num_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, entry in write_shipped(args.out).items():
            print(f"{name}: {SHIPPED[name].role}; sha256 {entry['sha256'][:16]}")
        print(f"wrote {len(SHIPPED)} models and manifest.json to {args.out}")
    else:
        print(shipped_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
