"""Shard sets on an S3-compatible object store: moto's server on 127.0.0.1, spoken to over HTTP.

pyarrow's S3FileSystem (``s3://`` URIs) finds the server through the standard AWS environment
(``AWS_ENDPOINT_URL`` and friends), in this process and in the Ray workers: preprocessing writes
shards there, and every reader (ShardDataset, Ray Data, COCO evaluation) reads them back.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("moto.server")
pytest.importorskip("ray")

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from support.coco_subset import write_coco_subset  # noqa: E402
from support.mlflow_server import free_port  # noqa: E402
from support.s3_server import moto_s3  # noqa: E402

from pipelines.data.ingest import shard_dataset, training_dataset  # noqa: E402
from pipelines.data.shards import PreprocessSettings, run_preprocess  # noqa: E402
from samdetr.data import storage  # noqa: E402
from samdetr.data.coco_source import load_annotations  # noqa: E402
from samdetr.data.shards import ShardDataset, iter_rows, read_manifest, verify_shards  # noqa: E402
from samdetr.data.storage import file_sizes, resolve_fs  # noqa: E402
from samdetr.engine.evaluation import eval_loader, ground_truth  # noqa: E402

BUCKET = "samdetr-test"
NUM_IMAGES = 6
SHARD_MB = 0.4  # several shards of the 6 photos
SMALL = {"scales": [96, 128], "max_size": 200, "crop_sizes": [100], "crop_range": [64, 96]}


@pytest.fixture(scope="module")
def s3(coco128_dir, tmp_path_factory):
    """A running moto S3 server with a bucket holding a COCO subset, and the AWS environment."""
    with moto_s3(BUCKET) as store, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        local = tmp_path_factory.mktemp("coco-subset")
        images = write_coco_subset(coco128_dir, local / "annotations.json", NUM_IMAGES)
        store.client.upload_file(str(local / "annotations.json"), BUCKET, "coco/annotations.json")
        for info in images:
            path = coco128_dir / "images" / info["file_name"]
            store.client.upload_file(str(path), BUCKET, f"coco/images/{info['file_name']}")
        yield SimpleNamespace(
            env=store.env,
            client=store.client,
            annotations=str(local / "annotations.json"),
            images=str(coco128_dir / "images"),
            ids=sorted(i["id"] for i in images),
            file_names=[i["file_name"] for i in images],
            tmp=tmp_path_factory.mktemp("s3-local"),
        )


@pytest.fixture(scope="module")
def ray_s3(s3):
    """Local Ray whose workers get the AWS environment (passed explicitly: a Ray started
    before the variables were set would not inherit them)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": s3.env},
    )
    yield
    ray.shutdown()


def _preprocess(s3, output: str, **kwargs) -> dict:
    settings = dict(annotations=s3.annotations, images=s3.images, shard_size_mb=SHARD_MB)
    return run_preprocess(PreprocessSettings(output=output, **{**settings, **kwargs}))


@pytest.fixture(scope="module")
def shard_sets(s3, ray_s3):
    """The same preprocessing into a local folder and into the bucket."""
    local = str(s3.tmp / "train")
    uri = f"s3://{BUCKET}/shards/train"
    return SimpleNamespace(local=local, uri=uri, local_manifest=_preprocess(s3, local),
                           s3_manifest=_preprocess(s3, uri))  # fmt: skip


def _keys(s3, prefix: str) -> set[str]:
    listing = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix) :] for obj in listing.get("Contents", [])}


@pytest.mark.slow
def test_preprocess_writes_the_same_shard_set_to_s3(s3, shard_sets):
    written = shard_sets.s3_manifest
    assert len(written["shards"]) > 1 and written["num_rows"] == NUM_IMAGES
    assert written["root"] == shard_sets.uri  # the URI, not the bucket-relative path
    # The objects: the manifest, the shards and at most an empty "folder" marker.
    expected = {"manifest.json"} | {s["file"] for s in written["shards"]}
    assert _keys(s3, "shards/train/") - {""} == expected

    manifest = read_manifest(shard_sets.uri)
    verify_shards(manifest)  # sizes and sha256 of every object in the bucket
    local = read_manifest(shard_sets.local)
    for key in ("shards", "num_rows", "num_boxes", "num_classes", "categories", "counters"):
        assert manifest[key] == local[key], key
    rows = list(ShardDataset(shard_sets.uri))
    assert rows == list(ShardDataset(shard_sets.local))  # same bytes, boxes, ids, in order
    assert [r["image_id"] for r in rows] == s3.ids
    assert list(iter_rows(manifest, columns=["image_id", "boxes"])) == [
        {"image_id": r["image_id"], "boxes": r["boxes"]} for r in rows
    ]


@pytest.mark.slow
def test_existing_shard_set_on_s3_needs_overwrite(s3, ray_s3):
    uri = f"s3://{BUCKET}/shards/again"
    first = _preprocess(s3, uri, shard_size_mb=64.0)
    assert len(first["shards"]) == 1
    with pytest.raises(ValueError, match="overwrite=true"):
        _preprocess(s3, uri)
    assert read_manifest(uri)["shards"] == first["shards"]  # the refused run changed nothing
    second = _preprocess(s3, uri, overwrite=True)
    manifest = read_manifest(uri)
    assert manifest["shards"] == second["shards"] and len(manifest["shards"]) > 1
    verify_shards(manifest)
    assert [r["image_id"] for r in ShardDataset(uri)] == s3.ids


@pytest.mark.slow
def test_preprocess_reads_annotations_and_images_from_s3(s3, shard_sets):
    ann_uri, img_uri = f"s3://{BUCKET}/coco/annotations.json", f"s3://{BUCKET}/coco/images"
    from_s3 = load_annotations(ann_uri)  # a URI without a filesystem argument
    from_disk = load_annotations(s3.annotations)
    assert from_s3.images == from_disk.images
    assert from_s3.source_sha256 == from_disk.source_sha256

    # Image sizes by HEAD requests and by one listing agree with the local files.
    fs, image_dir = resolve_fs(img_uri)
    names = s3.file_names + ["missing.jpg"]
    local_fs, local_dir = resolve_fs(s3.images)
    expected = file_sizes(local_fs, local_dir, names)
    assert expected["missing.jpg"] == 0 and all(expected[n] > 0 for n in s3.file_names)
    assert file_sizes(fs, image_dir, names) == expected
    assert file_sizes(fs, image_dir, names, list_above=0) == expected

    out = f"s3://{BUCKET}/shards/from-s3"
    manifest = _preprocess(s3, out, annotations=ann_uri, images=img_uri)
    assert manifest["shards"] == shard_sets.local_manifest["shards"]  # byte-identical shards
    verify_shards(read_manifest(out))


@pytest.mark.slow
def test_training_and_evaluation_read_shards_from_s3(s3, shard_sets):
    assert shard_dataset(shard_sets.uri).count() == NUM_IMAGES
    decoded = training_dataset(shard_sets.uri, train=True, transform_kwargs=SMALL).take_all()
    assert sorted(r["image_id"] for r in decoded) == s3.ids
    assert all(r["image"].dtype.name == "uint8" and r["image"].shape[0] == 3 for r in decoded)

    gt, local_gt = ground_truth(shard_sets.uri), ground_truth(shard_sets.local)
    assert gt.dataset["annotations"] == local_gt.dataset["annotations"]
    assert sorted(gt.getImgIds()) == s3.ids
    # num_workers=1: the dataset (and its S3 filesystem) is pickled into a loader process.
    loader = eval_loader(shard_sets.uri, size=96, max_size=128, batch_size=4, num_workers=1)
    seen = [int(t["image_id"]) for _, _, targets in loader for t in targets]
    assert sorted(seen) == s3.ids  # every image once (batched by size, so not in stored order)


def test_missing_bucket_fails_clearly(s3):
    uri = "s3://no-such-bucket/shards/train"
    for read in (read_manifest, ShardDataset, ground_truth, load_annotations):
        with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
            read(uri)
    with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
        _preprocess(s3, uri)  # refused before any annotation or image is read
    # An existing bucket without the shard set: not an "incomplete" set, just none.
    with pytest.raises(ValueError, match="no manifest: .* does not exist"):
        read_manifest(f"s3://{BUCKET}/nothing/here")


def test_unreachable_server_fails_clearly_and_quickly(s3, monkeypatch):
    # Readers (read_manifest, ShardDataset, ...) go through the same first check.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(OSError, match="cannot reach the s3 store for 's3://samdetr-test/"):
        _preprocess(s3, f"s3://{BUCKET}/shards/train")
    assert time.monotonic() - start < 30  # pyarrow tries 3 times: ~6 s here


def test_bad_uris_are_value_errors():
    with pytest.raises(ValueError, match="cannot open 'nosuch://x/y'"):
        resolve_fs("nosuch://x/y")
    with pytest.raises(ValueError, match="names no bucket"):
        resolve_fs("s3://")
    with pytest.raises(ValueError, match="empty path"):
        resolve_fs("")


class _FakeStore:
    """Enough of a pyarrow filesystem for the bucket check."""

    type_name = "fake"

    def __init__(self, outcome):
        self.outcome, self.calls = outcome, 0

    def equals(self, other):
        return other is self

    def get_file_info(self, path):
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return pafs.FileInfo(path, self.outcome)


def test_bucket_check_outcomes():
    present = _FakeStore(pafs.FileType.Directory)
    storage._check_bucket(present, "b/x", "fake://b/x")
    assert present.calls == 1
    with pytest.raises(ValueError, match="bucket 'b' does not exist"):
        storage._check_bucket(_FakeStore(pafs.FileType.NotFound), "b/x", "fake://b/x")
    # Without bucket-level rights the objects may still be readable: no verdict.
    denied = OSError("AWS Error ACCESS_DENIED during HeadBucket operation: Access Denied")
    storage._check_bucket(_FakeStore(denied), "b/x", "fake://b/x")
    with pytest.raises(OSError, match="cannot reach the fake store for 'fake://b/x': boom"):
        storage._check_bucket(_FakeStore(OSError("boom")), "b/x", "fake://b/x")
    unknown_403 = OSError("AWS Error UNKNOWN (HTTP status 403) during HeadBucket operation")
    storage._check_bucket(_FakeStore(unknown_403), "b/x", "fake://b/x")


# pyarrow's message when nothing answers names the endpoint's port, which may hold any digits.
_REFUSED = ("When getting information for bucket 'b': AWS Error NETWORK_CONNECTION during "
            "HeadBucket operation: curlCode: 7, Could not connect to server; Details: Failed to "
            "connect to 127.0.0.1 port {port} after 0 ms: Could not connect to server")


@given(port=st.integers(1024, 65535) | st.sampled_from([403, 4030, 14030, 40312, 54033]))
def test_an_unreachable_store_is_never_taken_for_a_denied_one(port):
    """A refused connection is "cannot reach", whatever the port: 40312 holds "403", which is
    not an access denial (else the first object request fails with pyarrow's bare message)."""
    store = _FakeStore(OSError(_REFUSED.format(port=port)))
    with pytest.raises(OSError, match="cannot reach the fake store"):
        storage._check_bucket(store, "b/x", "fake://b/x")


def test_bucket_check_is_not_s3_specific():
    """GCS goes through the same check (no emulator here: an unreachable endpoint)."""
    from datetime import timedelta

    gcs = pafs.GcsFileSystem(
        anonymous=True,
        scheme="http",
        endpoint_override=f"127.0.0.1:{free_port()}",
        retry_time_limit=timedelta(seconds=0.5),
    )
    with pytest.raises(OSError, match="cannot reach the gcs store for 'gs://bucket/x'"):
        storage._check_bucket(gcs, "bucket/x", "gs://bucket/x")
