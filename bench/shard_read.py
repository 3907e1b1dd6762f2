"""Reading a shard set with Ray Data, as every training epoch does: the project's reader
(``pipelines.data.ingest.shard_dataset``, Ray Data's file-by-file Parquet reader) against
``ray.data.read_parquet``'s default in Ray 2.60 (DataSourceV2, which lists the files again at
each execution and reads their footers on a pool of new actors), in one run, taking turns.

    python -m bench.shard_read --images 48 --shard-kb 64 --repeats 5

Each execution reads every row (``iter_rows``), as an epoch's first operator does; the first
execution of each reader is reported apart (Ray starts its worker processes then). Prints a
JSON report: seconds per execution for each reader, median and all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _read_all(dataset: Any) -> int:
    return sum(1 for _ in dataset.iter_rows())


def _default_reader(shard_dir: str) -> Any:
    """``read_parquet`` of the same files with Ray Data's default reader."""
    import ray

    from samdetr.data.shards import read_manifest

    files = [str(Path(shard_dir) / s["file"]) for s in read_manifest(shard_dir)["shards"]]
    return ray.data.read_parquet(files)


def measure(shard_dir: str, repeats: int) -> dict[str, Any]:
    """Seconds per execution of each reader, taking turns."""
    from pipelines.data.ingest import shard_dataset

    readers = {"project (file by file)": lambda: shard_dataset(shard_dir),
               "read_parquet default (DataSourceV2)": lambda: _default_reader(shard_dir)}
    times: dict[str, list[float]] = {name: [] for name in readers}
    rows = {}
    for _ in range(repeats + 1):  # the first round: worker processes start
        for name, make in readers.items():
            start = time.perf_counter()
            rows[name] = _read_all(make())
            times[name].append(time.perf_counter() - start)
    return {name: {"rows": rows[name], "first_s": round(t[0], 3),
                   "median_s": round(statistics.median(t[1:]), 3),
                   "all_s": [round(x, 3) for x in t[1:]]} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--shard-kb", type=int, default=64,
                        help="encoded image bytes per shard file (KiB): sets the file count")
    parser.add_argument("--repeats", type=int, default=5, help="executions of each reader")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()

    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from pipelines.common.console import quiet_driver
    from samdetr.data.coco_rows import local_reader
    from samdetr.data.coco_source import load_annotations
    from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
    from samdetr.data.storage import resolve_fs
    from samdetr.data.synthetic import make_synthetic_coco

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_synthetic_coco(root / "data", args.images, seed=0)
        fs, out = resolve_fs(str(root / "shards"), None)
        manifest = write_shard_set(
            load_annotations(root / "data" / "annotations.json"),
            local_reader(root / "data" / "images"),
            lambda name: (root / "data" / "images" / name).stat().st_size,
            out, fs, ShardSetOptions(target_bytes=args.shard_kb * 1024))
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 log_to_driver=False)
        quiet_driver(verbose=False)  # no Ray Data progress bars or execution lines
        try:
            report = {"images": args.images, "shards": len(manifest["shards"]),
                      "cpus": args.cpus,
                      "readers": measure(str(root / "shards"), args.repeats)}
        finally:
            ray.shutdown()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
