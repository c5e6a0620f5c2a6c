"""Do two runs of the pipeline rank the systems the same way? Compares the rankings tables of two
storage roots (two machines, two precisions, two commits): per task, metric and shot count, the
groups of tied systems in order, and where they differ.

    python bench/ranking_stability.py data /tmp/float32/data

Exit status 0 when every ranking (order and ties) agrees, 1 otherwise.
"""

import argparse
import sys

from pipeline import load_rankings
from pipeline.metrics.rankings import GROUP


def ranked_groups(table) -> dict[tuple, list[frozenset[str]]]:
    """Per (task, dataset, split, metric, shots): the sets of systems sharing each rank, best first."""
    return {
        key: [frozenset(r["system"]) for _, r in rows.groupby("rank", sort=True)]
        for key, rows in table.groupby(GROUP, sort=True)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="a storage root (folder or URL) holding metrics/rankings.parquet")
    parser.add_argument("second")
    args = parser.parse_args()
    first, second = ranked_groups(load_rankings(args.first)), ranked_groups(load_rankings(args.second))
    shared = sorted(set(first) & set(second), key=str)
    differ = [key for key in shared if first[key] != second[key]]
    for key in shared:
        task, _, split, metric, shots = key
        where = f"{split} {metric}" if task == "captioning" else f"{metric}, {shots}-shot"
        show = " > ".join(" = ".join(sorted(group)) for group in first[key])
        if key in differ:
            other = " > ".join(" = ".join(sorted(group)) for group in second[key])
            print(f"DIFFERS  {where}\n  {args.first}: {show}\n  {args.second}: {other}")
        else:
            print(f"same     {where}: {show}")
    print(f"{len(shared) - len(differ)} of {len(shared)} rankings agree (order and ties)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
