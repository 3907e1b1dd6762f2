"""Every documented pipeline command composes, and the documented sequences agree.

The commands: every ``python -m pipelines.<name> ...`` in README.md and docs/*.md (fenced code
blocks and inline code spans), in the comment lines of infra/ (YAML and Dockerfiles), and the
KubeRay RayJobs' ``entrypoint``s. A line is read as the shell would: ``\\`` continuations
joined, trailing ``# comments`` dropped, ``&&`` / ``;`` / ``|`` separating commands, ``for``
loops run once per value, ``export`` and ``NAME=value`` prefixes setting variables, ``$NAME``
expanded. What a reader fills in (``BUCKET``, ``ID``, ``...``) is replaced by the sample values
of :data:`PLACEHOLDERS`, :data:`ELIDED_VALUES` and :data:`ELIDED_WORD`; an all-capitals word
that is none of them fails the test, so nothing is skipped silently.

Each command is then composed as ``--cfg job`` would: a Hydra pipeline through
:func:`pipelines.cli.submit.check_overrides`; ``pipelines.submit`` through
:func:`pipelines.jobs.settings.split_command`, :func:`pipelines.cli.submit.load_settings` and
``check_overrides`` for the pipeline it sends; ``pipelines.demo`` (argparse) by parsing its
flags. A failure names the file and line.

The sequences compare the composed configs' values: the shards a train reads are those
preprocess wrote, the checkpoint evaluate reads is where that train writes
(``<trainer.storage_path>/<trainer.run_name>/epoch_NNNN``), the registered model a sweep or a
training run registers is the one promote, evaluate and predict read, and a sweep on an official
recipe trains that recipe's epochs.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from support.doc_commands import (  # noqa: F401
    COMMANDS,
    ELIDED_VALUES,
    PLACEHOLDERS,
    RAYJOBS,
    ROOT,
    Command,
    _markdown_commands,
    _pipeline_commands,
    _rayjob_commands,
    check_command,
    checkpoint_of,
    composed,
    find,
    model_uri,
    same_path,
    tracking_uri,
)

from pipelines.cli.config_store import HELPER_KEYS
from pipelines.data.shards import PreprocessSettings


def test_commands_were_found():
    found = {c.where.split(":")[0] for c in COMMANDS}
    for path in ("README.md", "docs/training.md", "docs/cluster.md", "docs/sweeps.md",
                 "docs/registry.md", "docs/data.md", "infra/kuberay/rayjob-train.yaml",
                 "infra/kuberay/rayjob-sweep.yaml"):
        assert path in found, f"no pipeline command read from {path}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_documented_command_composes(command):
    try:
        check_command(command)
    except Exception as err:  # noqa: BLE001 - report the line, whatever the failure
        pytest.fail(f"{command.where}: `{command.text.strip()}` does not compose:\n{err}",
                    pytrace=False)


def test_a_broken_line_fails_naming_its_file_and_line(tmp_path):
    text = ("# x\n\n```bash\npython -m pipelines.train \\\n    trainer.epoch=3   # a typo\n```\n\n"
            "Inline: `python -m pipelines.study study.variants.sam.num_salient_points=4`.\n")
    path = tmp_path / "broken.md"
    path.write_text(text)
    broken = _markdown_commands(path, "docs/broken.md")
    assert [c.where for c in broken] == ["docs/broken.md:4", "docs/broken.md:8"]
    for command in broken:
        with pytest.raises(ValueError, match="do not compose"):
            check_command(command)
    for line, problem in (("python -m pipelines.promote shards=MY_SHARDS", "neither in PLACEH"),
                          ("python -m pipelines.preprocess split=$split", r"\$split is not set")):
        (command,) = _pipeline_commands(line, "x.md:1", {}, [])
        with pytest.raises(AssertionError, match=problem):
            check_command(command)
    with pytest.raises(ValueError, match="does not take"):
        check_command(Command("x.md:1", "demo", ["--epocs", "3"]))
    with pytest.raises(ValueError, match="do not compose"):
        check_command(Command("x.md:1", "submit", ["address=http://h:8265", "tune",
                                                    "sweep.nme=x"]))


def test_shell_forms_are_read_as_the_shell_would():
    variables: dict[str, str] = {}
    loops: list = []
    assert _pipeline_commands("export A=s3://b", "x:1", variables, loops) == []
    assert _pipeline_commands("for s in train val; do", "x:2", variables, loops) == []
    found = _pipeline_commands(
        "  X=1 python -m pipelines.preprocess split=$s output=$A/$s ...  # comment", "x:3",
        variables, loops)
    assert [c.words for c in found] == [["split=train", "output=s3://b/train"],
                                        ["split=val", "output=s3://b/val"]]
    assert found[0].env == {"A": "s3://b", "X": "1"}
    _pipeline_commands("done", "x:4", variables, loops)
    assert loops == []
    both = _pipeline_commands("python -m pipelines.train && python -m pipelines.evaluate "
                              "shards=...", "x:5", {}, [])
    assert [(c.module, c.words) for c in both] == [
        ("train", []), ("evaluate", [f"shards={ELIDED_VALUES['shards']}"])]



def assert_synthetic_chain(make: dict, preprocess: dict) -> None:
    """preprocess reads the COCO-format folder make_synthetic writes (images/ and
    annotations.json under out_dir)."""
    out_dir = make["out_dir"]
    assert same_path(preprocess["data"]["annotations"], f"{out_dir}/annotations.json"), (
        preprocess["data"]["annotations"], out_dir)
    assert same_path(preprocess["data"]["images"], f"{out_dir}/images"), (
        preprocess["data"]["images"], out_dir)


def assert_reads_shards(train: dict, preprocess: dict[str, dict]) -> None:
    for split in ("train", "val"):
        assert same_path(train["data"][f"{split}_shards"], preprocess[split]["output"]), (
            split, train["data"][f"{split}_shards"], preprocess[split]["output"])


def assert_evaluates(evaluate: dict, train: dict) -> None:
    """evaluate reads the last checkpoint of ``train``, on its validation shards."""
    assert same_path(evaluate["checkpoint"].removesuffix("/checkpoint.pt"),
                     checkpoint_of(train)), (evaluate["checkpoint"], checkpoint_of(train))
    assert same_path(evaluate["shards"], train["data"]["val_shards"]), (
        evaluate["shards"], train["data"]["val_shards"])


def assert_promotes(promote: dict, registered_model: str, alias: str) -> None:
    assert promote["registered_model"] == registered_model, (promote["registered_model"],
                                                             registered_model)
    assert promote["challenger_alias"] == alias, (promote["challenger_alias"], alias)


def _chain(source: str, train_has: tuple[str, ...]) -> tuple[dict, dict]:
    """make_synthetic -> preprocess -> train of ``source``: checked; (train, preprocess)."""
    preprocess = {}
    for split in ("train", "val"):
        make = composed(find(source, "make_synthetic", f"out_dir=data/synthetic/{split}"))
        preprocess[split] = composed(find(source, "preprocess", "data=synthetic",
                                          f"split={split}"))
        assert_synthetic_chain(make, preprocess[split])
    train = composed(find(source, "train", *train_has))
    assert_reads_shards(train, preprocess)
    return train, preprocess


# ---- The sequences ------------------------------------------------------------------------------

def test_readme_sequence_make_data_preprocess_train_evaluate():
    train, _ = _chain("README.md", ("trainer.run_name=shapes",))
    assert_evaluates(composed(find("README.md", "evaluate")), train)


def test_readme_sequence_tune_predict_promote():
    tune = composed(find("README.md", "tune"))
    name, alias = tune["tracking"]["registered_model"], tune["sweep"]["alias"]
    assert name, "the README's sweep registers no model"
    predict = composed(find("README.md", "predict"))
    assert predict["model_uri"] == model_uri(name, alias)
    promote = composed(find("README.md", "promote", f"shards={PLACEHOLDERS['HELD_OUT_SHARDS']}"))
    assert_promotes(promote, name, alias)
    rollback = composed(find("README.md", "promote", "rollback=true"))
    assert rollback["registered_model"] == name


def test_training_sequence_train_resume_evaluate():
    source = "docs/training.md"
    first, _ = _chain(source, ("trainer.run_name=shapes", "trainer.epochs=20"))
    resumed, _ = _chain(source, ("trainer.run_name=shapes", "trainer.epochs=30"))
    # The second command resumes the first: same run folder, more epochs.
    assert checkpoint_of(first).rsplit("/", 1)[0] == checkpoint_of(resumed).rsplit("/", 1)[0]
    assert resumed["trainer"]["epochs"] > first["trainer"]["epochs"]
    assert_evaluates(composed(find(source, "evaluate", "checkpoint=outputs/ray/shapes/"
                                   f"epoch_{resumed['trainer']['epochs']:04d}")), resumed)
    # predict reads a checkpoint the resumed run keeps: its last (Ray Train keeps the best and
    # the latest).
    predict = composed(find(source, "predict", "images=[a.jpg,b.png]"))
    assert same_path(predict["checkpoint"], checkpoint_of(resumed))


def test_training_sequence_registered_run_evaluate():
    source = "docs/training.md"
    recipe = find(source, "train", "experiment=sam_detr_r50_smca_e12")
    train = composed(recipe)
    uri = model_uri(train["tracking"]["registered_model"], train["tracking"]["alias"])
    evaluate = composed(find(source, "evaluate", f"model_uri={uri}"))
    assert same_path(evaluate["shards"], train["data"]["val_shards"]), evaluate["shards"]
    # The recipe's validation shards are those docs/data.md's COCO preprocess writes.
    written = composed(find("docs/data.md", "preprocess", "data=coco2017", "ray_address=auto"))
    assert same_path(train["data"]["val_shards"], written["output"]), written["output"]


def test_sweep_on_this_machine_feeds_predict():
    """docs/sweeps.md's sweep registers the model docs/training.md's predict reads, and
    generates the images it runs on (pipelines/data/shapes.py: <root>/data/<split>/images
    beside <root>/shards/<split>)."""
    tune = composed(find("docs/sweeps.md", "tune", exact=True))
    tune_uri = model_uri(tune["tracking"]["registered_model"], tune["sweep"]["alias"])
    predict = composed(find("docs/training.md", "predict", "salient_points=true"))
    assert predict["model_uri"] == tune_uri
    root = PurePosixPath(tune["data"]["val_shards"]).parent.parent
    assert tune["sweep"]["make_data"], "the sweep generates no shapes"
    assert same_path(predict["images"], str(root / "data" / "val" / "images"))


def test_sweep_on_a_gpu_cluster_feeds_promote():
    tune = composed(find("docs/sweeps.md", "tune", "experiment=sam_detr_r50_e12",
                         "tracking=server"))
    name, alias = tune["tracking"]["registered_model"], tune["sweep"]["alias"]
    assert_promotes(composed(find("docs/registry.md", "promote", "registered_model=sam-detr",
                                  "shards=s3://bucket/shards/coco/holdout")), name, alias)


def test_registry_commands_read_the_promoted_model():
    promote = composed(find("docs/registry.md", "promote", "registered_model=sam-detr",
                            "shards=s3://bucket/shards/coco/holdout"))
    champion = model_uri(promote["registered_model"], promote["champion_alias"])
    for module in ("evaluate", "predict"):
        assert composed(find("docs/registry.md", module))["model_uri"] == champion
    rollback = composed(find("docs/registry.md", "promote", "rollback=true"))
    assert rollback["registered_model"] == promote["registered_model"]


def test_cluster_sequence_preprocess_rayjobs_promote():
    """docs/cluster.md: preprocess writes the shards both training RayJobs read; the promotion
    RayJob proposes what they register (its challenger_model, same alias), on the same MLflow
    server, on shards neither saw."""
    source = "docs/cluster.md"
    preprocess = {split: composed(find(source, "preprocess", f"split={split}"))
                  for split in ("train", "val")}
    runs = {}
    for path in RAYJOBS:
        (command,) = _rayjob_commands(path)
        runs[path.name] = (command, composed(command))
    for name in ("rayjob-train.yaml", "rayjob-sweep.yaml"):
        assert_reads_shards(runs[name][1], preprocess)
    sweep_command, sweep = runs["rayjob-sweep.yaml"]
    promote_command, promote = runs["rayjob-promote.yaml"]
    assert "infra/kuberay/rayjob-promote.yaml" in (ROOT / source).read_text()
    assert promote["challenger_model"] == sweep["tracking"]["registered_model"] == \
        runs["rayjob-train.yaml"][1]["tracking"]["registered_model"]
    assert promote["challenger_alias"] == sweep["sweep"]["alias"]
    # The same registry: each job's $MLFLOW_TRACKING_URI is the same server.
    assert tracking_uri(promote_command, promote) == tracking_uri(sweep_command, sweep)
    # Held out: neither the sweep's training nor its validation shards.
    for split in ("train", "val"):
        assert not same_path(promote["shards"], sweep["data"][f"{split}_shards"])


def test_performance_gpu_run_is_evaluated():
    source = "docs/performance.md"
    train = composed(find(source, "train", "trainer.run_name=bench_r50_bf16"))
    assert_evaluates(composed(find(source, "evaluate", "device=cuda")), train)


def test_data_synthetic_preprocess():
    make = composed(find("docs/data.md", "make_synthetic"))
    preprocess = composed(find("docs/data.md", "preprocess", "data=synthetic"))
    assert_synthetic_chain(make, preprocess)


def test_data_formats_make_valid_settings_and_feed_train():
    """docs/data.md's own-data commands: each is a valid run in its format (checked as
    pipelines.preprocess checks it), and train data=custom reads the shards the VOC loop
    writes."""
    source = "docs/data.md"
    commands = {
        ("coco", "train"): find(source, "preprocess", "data.images=/data/pets/images"),
        ("yolo", "train"): find(source, "preprocess", "data=custom", "data.format=yolo"),
        **{("voc", split): find(source, "preprocess", "data.format=voc", "data.name=pets",
                                f"split={split}") for split in ("train", "val")},
    }
    written = {}
    for (fmt, split), command in commands.items():
        plain = {k: v for k, v in composed(command).items() if k not in HELPER_KEYS}
        settings = PreprocessSettings.from_config(plain)
        assert (settings.format, settings.split) == (fmt, split), command.where
        written[fmt, split] = plain
    assert composed(commands["voc", "train"])["data"]["classes"] == ["cat", "dog"]
    train = composed(find(source, "train", "data=custom", "data.name=pets"))
    assert_reads_shards(train, {split: written["voc", split] for split in ("train", "val")})
    assert train["model"]["num_classes"] == 2


def test_a_carved_split_with_chosen_classes_feeds_train():
    """docs/data.md's carved split: the train and val runs differ in split alone (so they take
    the two parts of one split, with the same classes), and train data=custom reads both
    with K = the number of classes kept."""
    source = "docs/data.md"
    written, selections = {}, {}
    for split in ("train", "val"):
        command = find(source, "preprocess", "data.name=birds", "data.val_fraction=0.2",
                       f"split={split}")
        written[split] = {k: v for k, v in composed(command).items() if k not in HELPER_KEYS}
        settings = PreprocessSettings.from_config(written[split])
        selections[split] = settings.selection()
        assert selections[split].split == split and selections[split].read_split() == "train"
    assert {k: v for k, v in vars(selections["train"]).items() if k != "split"} == {
        k: v for k, v in vars(selections["val"]).items() if k != "split"}
    train = composed(find(source, "train", "data=custom", "data.name=birds"))
    assert_reads_shards(train, written)
    assert train["model"]["num_classes"] == len(selections["train"].class_map.keep)


@pytest.mark.parametrize("command", [c for c in COMMANDS if re.search(
    r"experiment=sam_detr_\w+_e\d+", " ".join(c.words))], ids=lambda c: c.where)
def test_official_recipes_train_their_epochs(command):
    """A run or sweep documented on an official recipe trains that recipe's epochs (unless it
    says trainer.epochs itself): conf/tune.yaml's own epoch count must not win silently."""
    if any(w.startswith("trainer.epochs=") for w in command.words):
        return
    recipe = re.search(r"experiment=(sam_detr_\w+_e(\d+))", " ".join(command.words))
    config = composed(command)
    assert config["trainer"]["epochs"] == int(recipe.group(2)), (
        f"{command.where}: experiment={recipe.group(1)} composes to "
        f"trainer.epochs={config['trainer']['epochs']}")
