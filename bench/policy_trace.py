"""Eviction, admission and the nightly fill on generated video traces.

A thin wrapper over ``python -m bench.policy`` (bench/policy/, where the
replay lives): every trace shape, every policy, at the capacities given.

Usage: python bench/policy_trace.py [--capacity 1%,5%,10%,20%] [--seed N]
       [any other ``python -m bench.policy`` option]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.policy.__main__ import main as replay_main
from bench.policy.generate import SHAPES


def main(argv: list[str]) -> int:
    if "--capacity" not in argv:
        argv = [*argv, "--capacity", "1%,5%,10%,20%"]
    for shape in SHAPES:
        code = replay_main(["--shape", shape, "--policy", "all", *argv])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
