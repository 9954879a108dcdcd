"""A/B timing of V(2,1) Poisson solves between two checkouts, in alternating fresh processes.

    git worktree add /tmp/before <commit> --detach
    python benchmarks/ab_poisson.py /tmp/before . --rounds 4

Each process imports one checkout's ``mgcore``/``pde`` and prints the best of ``--repeats`` set-up + solve
times per grid; alternating the checkouts process by process makes a drifting machine hit both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_CHILD = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import mgcore, pde
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[3]))
for n in map(int, sys.argv[4].split(",")):
    problem = pde.poisson((n, n))
    best = float("inf")
    for _ in range(int(sys.argv[2])):
        start = time.perf_counter()
        solver = mgcore.MultigridSolver(problem.A, (n, n))
        x, info = solver.solve(problem.f, rtol=1e-8)
        best = min(best, time.perf_counter() - start)
    print(n, best, flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="checkout A (its root folder)")
    parser.add_argument("after", help="checkout B")
    parser.add_argument("--sizes", default="1023,2047", help="grid sides, comma separated")
    parser.add_argument("--rounds", type=int, default=4, help="processes per checkout")
    parser.add_argument("--repeats", type=int, default=5, help="set-up + solve runs per process (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for label, root in (("before", args.before), ("after", args.after)):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, root, str(args.repeats), str(args.threads), args.sizes],
                capture_output=True, text=True, check=True,
            ).stdout
            for line in out.split("\n"):
                if line.strip():
                    n, seconds = line.split()
                    times.setdefault((label, int(n)), []).append(float(seconds))
    print("| grid | before (s) | median | after (s) | median | change |")
    print("|---|---|---:|---|---:|---:|")
    for n in map(int, args.sizes.split(",")):
        a, b = sorted(times[("before", n)]), sorted(times[("after", n)])
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {n}^2 | {', '.join(f'{t:.3f}' for t in a)} | {ma:.3f} | {', '.join(f'{t:.3f}' for t in b)} | "
              f"{mb:.3f} | {100 * (mb / ma - 1):+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
