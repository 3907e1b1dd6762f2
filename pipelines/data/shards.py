"""A data set (COCO JSON, YOLO or Pascal VOC: :mod:`pipelines.data.sources`) -> Parquet shards
+ manifest, encoded in parallel by Ray Data (``python -m pipelines.preprocess`` is its command
line, and its docstring the usage). The manifest is written last: a run that dies part-way
leaves a folder readers refuse."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from pipelines.common.checks import flag, non_empty
from pipelines.common.console import connect  # Ray is heavy: imported only when a run starts
from pipelines.data.selection import (
    SELECTION_KEYS,
    Selection,
    selection_fields,
    selection_lines,
    selection_of,
)
from pipelines.data.sources import check_source, read_source, source_fields
from samdetr.config import known_fields
from samdetr.data.coco_rows import filesystem_reader, raise_on_rejects
from samdetr.data.coco_source import CocoSource
from samdetr.data.shard_writer import ShardTask, build_shard, combine, plan_tasks
from samdetr.data.shards import MANIFEST_NAME, ManifestContents, clear_manifest, write_manifest
from samdetr.data.storage import file_sizes, is_uri, resolve_fs


@dataclass(frozen=True)
class PreprocessSettings:
    """Validated settings of one preprocessing run (paths may be local or pyarrow URIs).

    ``format`` and the source settings after it are the ``data`` config node's; each format
    reads some of them (:data:`pipelines.data.sources.FORMATS`) and the others stay None. So
    are the class map and the carved split (``keep_classes`` .. ``split_from``:
    :mod:`pipelines.data.selection`).
    """
    output: str
    format: str = "coco"  # coco | yolo | voc
    annotations: str | None = None  # coco: the instances JSON; yolo: the dataset YAML
    images: str | None = None  # coco: the folder the JSON's file names are relative to
    root: str | None = None  # voc: the folder of Annotations/, JPEGImages/, ImageSets/Main/
    classes: tuple[str, ...] | None = None  # voc: class names in id order (None: those found)
    keep_classes: tuple[str, ...] | None = None  # the classes kept, in new-id order (None: all)
    rename_classes: dict[str, str] | None = None  # {old: new}; one new name for two merges them
    drop_emptied_images: bool = False  # remove images whose every box was dropped
    val_fraction: float | None = None  # carve one split into train and val (None: don't)
    split_seed: int = 0  # the seed of that split
    split_from: str | None = None  # yolo, voc: the split that is carved (None: train)
    split: str = "train"  # the shards' name; yolo and voc: also the split that is read
    shard_size_mb: float = 256.0
    strict: bool = False  # any rejected image or box fails the run
    prefer_exif: bool = True  # EXIF orientation when the annotation size cannot tell
    overwrite: bool = False
    ray_address: str | None = None  # None: embedded local Ray (or RAY_ADDRESS if set)
    verbose: bool = False  # true: Ray's INFO logs and Ray Data's progress output as well

    def __post_init__(self) -> None:
        for name in ("output", "split"):
            non_empty(getattr(self, name), f"preprocess.{name}")
        check_source(self.format, self.source_settings())
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if isinstance(self.keep_classes, list):
            object.__setattr__(self, "keep_classes", tuple(self.keep_classes))
        if not self.split.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"split must be letters, digits, '-' or '_', got {self.split!r}")
        if not isinstance(self.shard_size_mb, (int, float)) or self.shard_size_mb <= 0:
            raise ValueError(f"shard_size_mb must be > 0, got {self.shard_size_mb!r}")
        for name in ("strict", "prefer_exif", "overwrite", "verbose"):
            flag(getattr(self, name), f"preprocess.{name}")
        self.selection()  # checked once, here

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSettings:
        return cls(**known_fields(cls, data, "preprocess"))

    @classmethod
    def from_config(cls, plain: dict[str, Any]) -> PreprocessSettings:
        """The settings of a composed ``conf/preprocess.yaml`` (a plain dict): its top level,
        and from its ``data`` node the format and what that format reads
        (:func:`pipelines.data.sources.source_fields`), and the class map and split
        (:func:`pipelines.data.selection.selection_fields`)."""
        rest = {k: v for k, v in plain.items() if k != "data"}
        data = plain.get("data") or {}
        return cls.from_dict({**rest, **source_fields(data), **selection_fields(data)})

    def source_settings(self) -> dict[str, Any]:
        """The source settings by name (annotations, images, root, classes)."""
        return {name: getattr(self, name) for name in ("annotations", "images", "root", "classes")}

    def selection(self) -> Selection:
        """The classes and the part of the source this run writes."""
        return selection_of(self.format, self.split,
                            {name: getattr(self, name) for name in SELECTION_KEYS})


def _encode_task(
    batch: dict[str, Any],
    images_uri: str,
    output_uri: str,
    categories: list[int],
    prefer_exif: bool,
) -> dict[str, Any]:
    """Ray Data map_batches function: one shard per row (tasks travel as JSON strings)."""
    fs_in, image_dir = resolve_fs(images_uri, None)
    fs_out, shard_dir = resolve_fs(output_uri, None)
    reader = filesystem_reader(fs_in, image_dir)
    results = []
    for payload in batch["task"]:
        raw = json.loads(payload)
        task = ShardTask(
            raw["index"],
            raw["file_name"],
            tuple((info, tuple(anns)) for info, anns in raw["items"]),
        )
        result = build_shard(task, reader, set(categories), shard_dir, fs_out, prefer_exif)
        results.append(json.dumps(result))
    return {"result": results}


class ShardProgress:
    """Progress lines of a run: shards and images done, images/s and the time left.

    A line at most every ``every_s`` seconds as shards finish, and one for the last shard.
    """

    def __init__(self, images_per_shard: dict[int, int], write: Callable[[str], None],
                 every_s: float = 10.0):
        self.images_per_shard, self.write, self.every_s = images_per_shard, write, every_s
        self.total = sum(images_per_shard.values())
        self.shards_done = self.images_done = 0
        self.start = time.perf_counter()
        self.last_line = -math.inf

    def shard_done(self, index: int) -> None:
        self.shards_done += 1
        self.images_done += self.images_per_shard[index]
        now = time.perf_counter()
        if now - self.last_line >= self.every_s or self.shards_done == len(self.images_per_shard):
            self.last_line = now
            self.write(self.line(now - self.start))

    def line(self, elapsed: float) -> str:
        rate = self.images_done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.images_done) / rate if rate > 0 else math.inf
        percent = 100.0 * self.images_done / max(1, self.total)
        return (
            f"[preprocess] {self.shards_done}/{len(self.images_per_shard)} shards, "
            f"{self.images_done}/{self.total} images ({percent:.1f}%), {rate:.1f} images/s, "
            f"{_duration(left)} left"
        )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "? s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class PreprocessPlan:
    """What the steps of one run share: the output, the parsed annotations and the shards.

    ``fs_out``/``out_dir``: the output folder on its filesystem; ``images_uri``/``output_uri``:
    the image and output folders as workers resolve them (URIs stay URIs); ``tasks``: one per
    shard, in shard order; ``selection``: the manifest's record of the class map and split
    part applied (None: the source as read).
    """
    config: PreprocessSettings
    source: CocoSource
    tasks: list[ShardTask]
    fs_out: pafs.FileSystem
    out_dir: str
    images_uri: str
    output_uri: str
    selection: dict[str, Any] | None = None


def run_preprocess(
    config: PreprocessSettings, progress: Callable[[str], None] | None = None,
    progress_every_s: float = 10.0,
) -> dict[str, Any]:
    """Write the shards and the manifest; returns the manifest (with a ``summary``).

    ``progress`` (e.g. ``print``) receives a start line and :class:`ShardProgress` lines.
    """
    start = time.perf_counter()
    plan = plan_preprocess(config)
    # Ray Data's own progress and INFO logs only with verbose: the progress lines are ours.
    connect(config.ray_address, verbose=config.verbose, log_to_driver=False)
    results = encode_shards(plan, progress, progress_every_s)
    return write_preprocess_manifest(plan, results, start)


def _prepare_output(config: PreprocessSettings) -> tuple[pafs.FileSystem, str]:
    """The output folder on its filesystem. An existing shard set is refused, or with
    ``overwrite`` loses its manifest at once, so the folder no longer looks complete."""
    fs_out, out_dir = resolve_fs(config.output, None)
    manifest_path = f"{out_dir.rstrip('/')}/{MANIFEST_NAME}"
    if fs_out.get_file_info(manifest_path).type != pafs.FileType.NotFound:
        if not config.overwrite:
            raise ValueError(
                f"{config.output} already holds a shard set (manifest.json); "
                "pass overwrite=true to replace it"
            )
        clear_manifest(out_dir, fs_out)
    return fs_out, out_dir


def plan_preprocess(config: PreprocessSettings) -> PreprocessPlan:
    """Prepare the output, read the split in its format, take the part and classes the run
    writes (:meth:`PreprocessSettings.selection`) and plan the shards from the image sizes.

    ValueError in strict mode when the annotations already hold rejects.
    """
    fs_out, out_dir = _prepare_output(config)
    selection = config.selection()
    read = read_source(config.format, config.source_settings(), selection.read_split())
    source, record = selection.apply(read.source)
    if config.strict:
        raise_on_rejects(source.rejects, context=source.path)
    sizes = file_sizes(read.fs, read.images_dir, [info["file_name"] for info in source.images])
    tasks = plan_tasks(source, sizes.__getitem__, config.split, int(config.shard_size_mb * 2**20))
    fs_out.create_dir(out_dir, recursive=True)
    return PreprocessPlan(
        config=config,
        source=source,
        tasks=tasks,
        fs_out=fs_out,
        out_dir=out_dir,
        images_uri=read.images_uri,
        output_uri=config.output if is_uri(config.output) else out_dir,
        selection=record,
    )


def encode_shards(
    plan: PreprocessPlan, progress: Callable[[str], None] | None = None,
    progress_every_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Run :func:`_encode_task` for every shard on Ray (already initialised); returns the
    :func:`build_shard` results in the order the shards finished."""
    import ray

    if not plan.tasks:
        return []
    workers = max(1, min(len(plan.tasks), int(ray.cluster_resources().get("CPU", 1))))
    tracker = ShardProgress({t.index: len(t.items) for t in plan.tasks},
                            progress or (lambda _: None), progress_every_s)
    if progress is not None:
        progress(f"[preprocess] {tracker.total} images -> {len(plan.tasks)} shards in "
                 f"{plan.config.output}, {workers} tasks at a time")
    results = []
    with _without_resource_reservation():
        for row in _shard_dataset(plan, workers).iter_rows():  # as shards finish, in any order
            results.append(json.loads(row["result"]))
            tracker.shard_done(results[-1]["index"])
    return results


@contextlib.contextmanager
def _without_resource_reservation() -> Iterator[None]:
    """A one-operator pipeline: Ray Data's default reservation of resources for downstream
    operators only throttles it (2 CPUs: 1.2 tasks at a time on average instead of 1.7)."""
    import ray

    context = ray.data.DataContext.get_current()
    reserved = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = reserved


def _shard_dataset(plan: PreprocessPlan, workers: int) -> Any:
    """The Ray Dataset of shard results: one block, and one map task, per shard."""
    import ray

    payloads = [{"task": json.dumps(dataclasses.asdict(t))} for t in plan.tasks]
    dataset = ray.data.from_items(payloads, override_num_blocks=len(payloads))
    return dataset.map_batches(
        _encode_task,
        batch_size=1,
        # With Ray Data's default budget, 8 one-second tasks on 2 local CPUs took 7.3 s;
        # one task per cluster CPU took 5.4 s.
        compute=ray.data.TaskPoolStrategy(size=workers),
        batch_format="numpy",
        fn_kwargs=dict(
            images_uri=plan.images_uri,
            output_uri=plan.output_uri,
            categories=sorted(plan.source.category_ids),
            prefer_exif=plan.config.prefer_exif,
        ),
    )


def write_preprocess_manifest(
    plan: PreprocessPlan, results: list[dict[str, Any]], start: float
) -> dict[str, Any]:
    """Merge the shard results and write the manifest; returns it with ``root`` (the output as
    given) and ``summary`` (``start``: the run's ``time.perf_counter()`` at its beginning).

    In strict mode any reject removes the written shards and raises ValueError instead.
    """
    config = plan.config
    shards, rejects, counters = combine(results, plan.source.rejects)
    if config.strict and rejects:
        for shard in shards:  # the run failed: leave no orphan shards behind
            plan.fs_out.delete_file(f"{plan.out_dir.rstrip('/')}/{shard['file']}")
        raise_on_rejects(rejects, context=plan.images_uri)
    contents = ManifestContents(
        split=config.split,
        shards=shards,
        categories=plan.source.categories,
        num_classes=plan.source.num_classes,
        source_sha256=plan.source.source_sha256,
        config=dataclasses.asdict(config),
        rejects=rejects,
        counters=counters,
        selection=plan.selection,
    )
    manifest = write_manifest(plan.out_dir, contents, plan.fs_out)
    manifest["root"] = plan.output_uri  # the URI (s3://...), not the path on its filesystem
    manifest["summary"] = _summary(shards, rejects, counters, time.perf_counter() - start)
    return manifest


def _summary(
    shards: list[dict[str, Any]], rejects: list[dict[str, Any]], counters: dict[str, int],
    seconds: float,
) -> dict[str, Any]:
    """The run's totals for :func:`format_summary`."""
    return {
        "images": counters.get("images", 0),
        "images_kept": counters.get("images_kept", 0),
        "images_rejected": counters.get("images_rejected", 0),
        "boxes": counters.get("boxes", 0),
        "boxes_rejected": len([r for r in rejects if r.get("kind") == "box"]),
        "clipped_boxes": counters.get("clipped_boxes", 0),
        "shards": len(shards),
        "megabytes": round(sum(s["bytes"] for s in shards) / 2**20, 2),
        "seconds": round(seconds, 2),
    }


def format_summary(manifest: dict[str, Any]) -> str:
    """A small table of what a run produced, for the end of the log."""
    s = manifest["summary"]
    rate = s["images"] / s["seconds"] if s["seconds"] else 0.0
    lines = [
        f"split {manifest['split']!r} -> {manifest['root']}",
        f"  images   {s['images']:>8}   kept {s['images_kept']}, rejected {s['images_rejected']}",
        f"  boxes    {s['boxes']:>8}   rejected {s['boxes_rejected']}, "
        f"clipped {s['clipped_boxes']}",
        f"  shards   {s['shards']:>8}   {s['megabytes']} MB, K = {manifest['num_classes']}",
        f"  time     {s['seconds']:>8}s  ({rate:.1f} images/s)",
        *selection_lines(manifest.get("selection")),
    ]
    if manifest["rejects"]:
        lines.append(f"  rejects listed in {manifest['root']}/manifest.json, e.g.:")
        lines += [
            f"    {r.get('file_name') or r.get('image_id')}: {r['reason']}"
            for r in manifest["rejects"][:5]
        ]
    return "\n".join(lines)
