"""End-to-end inference with :class:`samdetr.inference.Predictor` on a tiny random model."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from PIL import Image, ImageOps
from support.tiny import tiny_config

from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.data.transforms import eval_transforms
from samdetr.inference import TABLE_COLUMNS, Predictor, detections_table
from samdetr.model.postprocess import PostProcess

SIZE, MAX_SIZE = 64, 96
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}]
NUM_QUERIES, NUM_CLASSES, NUM_POINTS = 10, 5, 4


def make_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen)
    return Image.fromarray(pixels.numpy(), "RGB").convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def assert_same(result: dict, expected: dict, atol: float = 1e-4) -> None:
    assert set(result) == {"scores", "labels", "boxes", "points"}
    assert torch.equal(result["labels"], expected["labels"])
    for key in ("scores", "boxes", "points"):
        torch.testing.assert_close(result[key], expected[key], atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, eval_size=SIZE, max_size=MAX_SIZE, num_top=20, batch_size=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    transform = {"size": SIZE, "max_size": MAX_SIZE}
    save_checkpoint(path, model, tiny_config(), eval_transform=transform, categories=CATEGORIES)
    return path


# ----------------------------------------------------------------------------- results
def test_batched_equals_single(model, predictor):
    # Three images share a preprocessed shape (batched together), the others are alone; the
    # batched results must not depend on their neighbours.
    images = [
        make_image(120, 80, 0),
        make_image(50, 200, 1),
        make_image(120, 80, 2),
        make_image(90, 60, 3),  # same shape as 120x80 after resizing: 96x64
        make_image(33, 47, 4),
        make_image(120, 80, 5),
    ]
    batch_sizes = []
    hook = model.register_forward_hook(lambda mod, args, out: batch_sizes.append(len(args[0])))
    try:
        batched = predictor(images)
    finally:
        hook.remove()
    assert sorted(batch_sizes) == [1, 1, 1, 3]  # four 96x64 images: a batch of 3, then 1
    assert len(batched) == len(images)
    for image, result in zip(images, batched, strict=True):
        assert_same(result, predictor([image])[0])


def test_boxes_are_postprocess_boxes_in_original_pixels_clipped(model, predictor):
    image = make_image(150, 100, 7)
    result = predictor([image])[0]
    tensor, _ = eval_transforms(SIZE, MAX_SIZE)(
        image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    )
    with torch.no_grad():
        outputs = model(tensor[None])
    expected = PostProcess(20)(outputs, torch.tensor([[100, 150]]))[0]
    limits = torch.tensor([150.0, 100.0, 150.0, 100.0])
    clipped = torch.minimum(expected["boxes"].clamp(min=0), limits)
    torch.testing.assert_close(result["boxes"], clipped)
    torch.testing.assert_close(result["scores"], expected["scores"])
    assert torch.equal(result["labels"], expected["labels"])
    # points: the salient points of the query behind each (query, class) pair
    flat = outputs["pred_logits"][0].sigmoid().flatten().topk(20).indices
    torch.testing.assert_close(result["points"], outputs["salient_points"][0][flat // NUM_CLASSES])


@pytest.mark.parametrize(
    "width, height",
    [(640, 480), (480, 640), (300, 50), (50, 300), (1, 1), (2, 3), (1, 500), (1000, 700)],
)
def test_any_image_size(predictor, width, height):
    result = predictor([make_image(width, height)])[0]
    k = 20
    assert result["scores"].shape == (k,) and result["labels"].dtype == torch.int64
    assert result["boxes"].shape == (k, 4) and result["points"].shape == (k, NUM_POINTS, 2)
    assert torch.all(result["scores"][:-1] >= result["scores"][1:])
    boxes = result["boxes"]
    assert boxes.min() >= 0
    assert torch.all(boxes[:, [0, 2]] <= width) and torch.all(boxes[:, [1, 3]] <= height)
    assert torch.all(boxes[:, :2] <= boxes[:, 2:])
    assert torch.isfinite(result["points"]).all()
    assert ((0 <= result["labels"]) & (result["labels"] < NUM_CLASSES)).all()


def test_bytes_and_pil_inputs_agree(predictor):
    image = make_image(70, 110, 3)
    data = encode(image)
    results = predictor([image, data, bytearray(data), memoryview(data)])
    for result in results[1:]:
        assert_same(result, results[0], atol=1e-6)


def test_jpeg_bytes(predictor):
    image = make_image(80, 60, 4)
    data = encode(image, "JPEG", quality=90)
    assert_same(predictor([data])[0], predictor([Image.open(io.BytesIO(data))])[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "I;16", "CMYK"])
def test_other_modes_are_converted(predictor, mode):
    image = make_image(60, 40, 5, mode="RGB")
    if mode == "I;16":
        image = Image.fromarray((torch.arange(2400).reshape(40, 60) * 27).to(torch.int32).numpy())
        image = image.convert("I;16")
    else:
        image = image.convert(mode)
    from_pil = predictor([image])[0]
    assert from_pil["boxes"].shape == (20, 4)
    if mode != "CMYK":  # PNG cannot store CMYK
        assert_same(predictor([encode(image)])[0], from_pil, atol=1e-6)


def test_exif_orientation(predictor):
    stored = make_image(80, 40, 6)  # landscape pixels, EXIF says "rotate 90 degrees clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif)
    upright = predictor([data])[0]
    assert upright["boxes"][:, [0, 2]].max() <= 40 and upright["boxes"][:, [1, 3]].max() <= 80
    decoded = Image.open(io.BytesIO(data))
    assert_same(upright, predictor([ImageOps.exif_transpose(decoded)], exif_transpose=False)[0])
    assert_same(predictor([decoded])[0], upright, atol=1e-6)  # PIL inputs are oriented too
    raw = predictor([data], exif_transpose=False)[0]
    assert raw["boxes"][:, [0, 2]].max() <= 80 and raw["boxes"][:, [1, 3]].max() <= 40


def test_num_top_and_empty_input(predictor):
    images = [make_image(64, 64)]
    assert predictor([]) == []
    assert predictor(images, num_top=3)[0]["scores"].shape == (3,)
    everything = predictor(images, num_top=1000)[0]  # clipped to Q * K pairs
    assert everything["scores"].shape == (NUM_QUERIES * NUM_CLASSES,)


def test_baseline_decoder_has_no_points():
    torch.manual_seed(0)
    model = build_model(tiny_config(decoder="baseline"))
    result = Predictor(model, eval_size=SIZE, max_size=MAX_SIZE, num_top=7)([make_image(40, 30)])
    assert result[0]["points"].shape == (7, 0, 2)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "images, error, fragment",
    [
        (b"\x89PNG", TypeError, "wrap a single image in a list"),
        ("cat.jpg", TypeError, "list of encoded image bytes"),
        (make_image(8, 8), TypeError, "wrap a single image"),
        (None, TypeError, "got NoneType"),
        ([123], TypeError, "image 0 must be encoded image bytes or a PIL.Image, got int"),
        ([b"\x89PNG", "cat.jpg"], ValueError, "image 0"),
        (["cat.jpg"], TypeError, "a file path?"),
        ([b"not an image"], ValueError, "image 0: could not decode"),
        ([b""], ValueError, "empty bytes"),
        ([torch.zeros(3, 8, 8)], TypeError, "got Tensor"),
        ([Image.new("RGB", (0, 5))], ValueError, "image 0 is empty"),
    ],
)
def test_bad_images(predictor, images, error, fragment):
    with pytest.raises(error, match=fragment.replace("?", r"\?")):
        predictor(images)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"num_top": 0}, ValueError),
        ({"eval_size": -1}, ValueError),
        ({"batch_size": "2"}, TypeError),
        ({"max_size": 1.5}, TypeError),
        ({"num_top": True}, TypeError),
        ({"category_names": ["a", "b"]}, TypeError),
    ],
)
def test_bad_arguments(model, kwargs, error):
    with pytest.raises(error):
        Predictor(model, **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="SAMDETR"):
        Predictor("model.pth")


def test_bad_num_top_per_call(predictor):
    with pytest.raises(ValueError, match="num_top"):
        predictor([make_image(8, 8)], num_top=0)


# ----------------------------------------------------------------------------- checkpoints
def test_from_checkpoint_reads_extras(checkpoint, predictor):
    loaded = Predictor.from_checkpoint(checkpoint, num_top=20)
    assert (loaded.eval_size, loaded.max_size, loaded.num_top) == (SIZE, MAX_SIZE, 20)
    assert loaded.category_names == {1: "a", 3: "c"}
    assert not loaded.model.training
    image = make_image(100, 70, 9)
    assert_same(loaded([image])[0], predictor([image])[0], atol=1e-6)


def test_from_checkpoint_without_extras_and_overrides(tmp_path, model):
    path = save_checkpoint(tmp_path / "bare.pth", model, tiny_config())
    bare = Predictor.from_checkpoint(path)
    assert (bare.eval_size, bare.max_size, bare.num_top, bare.category_names) == (
        800,
        1333,
        100,
        {},
    )
    custom = Predictor.from_checkpoint(path, eval_size=32, batch_size=2, category_names={0: "z"})
    assert (custom.eval_size, custom.batch_size, custom.category_names) == (32, 2, {0: "z"})


@pytest.mark.parametrize(
    "extra", [{"eval_transform": "800"}, {"categories": [{"id": 1}]}, {"categories": 5}]
)
def test_from_checkpoint_bad_extras(tmp_path, model, extra):
    path = save_checkpoint(tmp_path / "bad.pth", model, tiny_config(), **extra)
    with pytest.raises(ValueError, match="bad.pth"):
        Predictor.from_checkpoint(path)


def test_from_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Predictor.from_checkpoint(tmp_path / "nothing.pth")


# ----------------------------------------------------------------------------- table
def test_detections_table(predictor):
    images = [make_image(40, 30, 1), make_image(30, 40, 2)]
    results = predictor(images, num_top=4)
    table = detections_table(results, {0: "zero", 1: "one"})
    assert tuple(table) == TABLE_COLUMNS
    assert all(len(column) == 8 for column in table.values())
    assert table["image_index"] == [0, 0, 0, 0, 1, 1, 1, 1]
    names = {0: "zero", 1: "one"}
    assert table["name"] == [names.get(label, "") for label in table["label"]]
    assert table["score"] == pytest.approx(torch.cat([r["scores"] for r in results]).tolist())
    assert [table[c][5] for c in ("x1", "y1", "x2", "y2")] == pytest.approx(
        results[1]["boxes"][1].tolist()
    )
    assert all(isinstance(v, int) for v in table["label"] + table["image_index"])
    assert detections_table([]) == {column: [] for column in TABLE_COLUMNS}


def test_detections_table_errors():
    with pytest.raises(TypeError):
        detections_table({"scores": torch.zeros(1)})
    with pytest.raises(ValueError, match="lacks"):
        detections_table([{"scores": torch.zeros(1)}])
    bad = {"scores": torch.zeros(2), "labels": torch.zeros(1), "boxes": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match="must match"):
        detections_table([bad])


def compare_devices(model, predictor, device: str) -> None:
    """The model's raw outputs on ``device`` equal the CPU ones, and a Predictor there gives
    the same scores, as CPU tensors.

    Detections are compared by their sorted scores, not rank by rank: the random-init model
    scores many detections within 1e-5 of each other (on an H100 two swapped places, which put
    boxes 50 px apart at the same rank). TF32 is off: it rounds matmul / conv inputs to 10 bits
    (logits then differed by 1e-3 instead of 1.4e-6)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
        mask = torch.zeros(2, 64, 96, dtype=torch.bool)
        mask[1, :, 80:] = True
        moved = copy.deepcopy(model).to(device)
        with torch.no_grad():
            expected, result = model(images, mask), moved(images.to(device), mask.to(device))
        for key in ("pred_logits", "pred_boxes", "salient_points"):
            torch.testing.assert_close(result[key].cpu(), expected[key], atol=1e-4, rtol=1e-4)
        # Predictor moves the model in place: give it a copy, the fixture stays on the CPU.
        other = Predictor(copy.deepcopy(model), SIZE, MAX_SIZE, num_top=20, device=device)
        pictures = [make_image(120, 80, 0), make_image(50, 200, 1), make_image(120, 80, 2)]
        for got, want in zip(other(pictures), predictor(pictures), strict=True):
            assert {v.device.type for v in got.values()} == {"cpu"}
            assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
            torch.testing.assert_close(got["scores"], want["scores"], atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_device_comparison_holds_on_cpu(model, predictor):
    compare_devices(model, predictor, "cpu")  # the same code as the CUDA test, runnable here


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(model, predictor):
    compare_devices(model, predictor, "cuda")
