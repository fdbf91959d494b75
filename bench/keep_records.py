"""Copy a tree of run folders without their weights: evaluations (metrics.json, ranks.npz), training logs, summaries,
configs, plans, reports and figures. A few hundred KB instead of GBs, these are what `kgdistill compare`,
`bench/plot_valid_curves.py` and BENCHMARKS.md's tables read, so they can be rerun after the run folders (or the
machine they were on) are gone; `bench/records/` holds the ones the benchmarks cite.

    python bench/keep_records.py runs/fb500g1 bench/records/fb500g1 --only teacher-540-lr1e-4 quick-early-lr1e-4-s7
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

KEPT_SUFFIXES = {".json", ".jsonl", ".npz", ".yaml", ".md", ".png"}
SKIPPED_FOLDERS = {"tokenizer", "trainer_state"}  # a checkpoint's tokenizer and optimiser state
SKIPPED_FILES = {"manifest.json", "model.json"}  # a checkpoint's checksums and architecture, no use without its weights


def kept(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return (path.suffix in KEPT_SUFFIXES and path.name not in SKIPPED_FILES and not path.name.startswith(".")
            and not SKIPPED_FOLDERS.intersection(parts[:-1]))


def keep_records(source: Path, destination: Path, only: list[str] | None = None) -> list[Path]:
    """Copy the records under ``source`` (or under its sub-folders ``only``) to the same paths under ``destination``;
    returns the files written."""
    tops = [source / name for name in only] if only else [source]
    missing = [str(top) for top in tops if not top.exists()]
    if missing:
        raise SystemExit(f"keep_records: not found: {', '.join(missing)}")
    written = []
    for top in tops:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if kept(path, source):
                target = destination / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a run folder or a folder of run folders")
    parser.add_argument("destination", type=Path)
    parser.add_argument("--only", nargs="+", help="copy only these entries of SOURCE (folders or files)")
    args = parser.parse_args()
    written = keep_records(args.source, args.destination, args.only)
    size = sum(p.stat().st_size for p in written)
    print(f"{len(written)} files, {size / 1024:.0f} KB, into {args.destination}")


if __name__ == "__main__":
    main()
