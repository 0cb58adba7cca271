"""The Dataflow route, as far as it can be checked without a cloud: the wheel workers install, the job the CLI builds
with it (or with a container image), and a `--model` on remote storage read in full only by the workers.

Not checked here: a real Dataflow run (no project, no network), Beam's GCS filesystem (the `gcp` extra is not
installed in CI; a stand-in remote filesystem below takes its route).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

from bioserc.pipelines import label_pipeline, runner
from bioserc.pipelines.options import parse_pipeline_args


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "transcripts"
DEFAULT_MODEL = ROOT / "serving_artifacts" / "default"
IMAGE = "europe-west1-docker.pkg.dev/bioserc-demo/bioserc/bioserc-cpu:0.1.0"
DATAFLOW = [
    "--runner",
    "DataflowRunner",
    "--project",
    "bioserc-demo",
    "--region",
    "europe-west1",
    "--temp_location",
    "gs://bucket/tmp",
]


class RecordingRemote(LocalFileSystem):
    """Local files under `recordtest://`, standing in for gs://; records every file opened for reading."""

    PREFIX = "recordtest://"
    opened: list[str] = []

    @classmethod
    def scheme(cls) -> str:
        return "recordtest"

    def exists(self, path):
        return super().exists(path.removeprefix(self.PREFIX))

    def match(self, patterns, limits=None):
        results = super().match([p.removeprefix(self.PREFIX) for p in patterns], limits)
        return [
            MatchResult(
                self.PREFIX + r.pattern, [FileMetadata(self.PREFIX + m.path, m.size_in_bytes) for m in r.metadata_list]
            )
            for r in results
        ]

    def open(self, path, *args, **kwargs):
        RecordingRemote.opened.append(Path(path).name)
        return super().open(path.removeprefix(self.PREFIX), *args, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`python -m pip wheel --no-deps --no-build-isolation SRC -w DIST`, from a clean copy of the sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    ):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(tmp / "dist"),
        ],
        check=True,
        capture_output=True,
        cwd=tmp,
        timeout=300,
    )
    (built,) = (tmp / "dist").glob("bioserc-*.whl")
    return built


def test_the_wheel_carries_the_pipelines_the_default_model_and_the_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    listed = json.loads((DEFAULT_MODEL / "manifest.json").read_text())["files"]
    default = "bioserc/serving_artifacts/default/"
    assert {default + "manifest.json", *(default + rel for rel in listed)} <= names
    assert {
        f"bioserc/pipelines/{m}.py"
        for m in (
            "label_pipeline",
            "bios_pipeline",
            "records",
            "io",
            "outputs",
            "label_steps",
            "classifier_handler",
            "rows",
            "runner",
            "bio_steps",
        )
    } <= names
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert {"gcp", "dask"} <= extras


def test_a_dataflow_job_stages_the_wheel_or_names_the_image(wheel, tmp_path):
    """The CLI passes --extra_package / --sdk_container_image through to Beam, which stages the wheel (workers pip
    install it) or runs every step in the image; the job graph builds for the Dataflow runner either way."""
    from apache_beam.options.pipeline_options import WorkerOptions
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.portability.stager import Stager
    from apache_beam.transforms.environments import DockerEnvironment

    argv = [
        str(DEMO),
        "-o",
        str(tmp_path / "out"),
        "--no-bios",
        *DATAFLOW,
        "--extra_package",
        str(wheel),
        "--sdk_container_image",
        IMAGE,
    ]
    args, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
    options = runner.pipeline_options(beam_args)
    pipeline = beam.Pipeline(options=options)
    assert type(pipeline.runner).__name__ == "DataflowRunner"
    plan = label_pipeline.build(pipeline, args)
    assert plan.model_id and plan.bios == "none"

    (tmp_path / "stage").mkdir()
    staged = Stager.create_job_resources(options, str(tmp_path / "stage"), log_submission_env_dependencies=False)
    names = {beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(a.role_payload).staged_name for a in staged}
    assert {wheel.name, "extra_packages.txt"} <= names
    assert (tmp_path / "stage" / "extra_packages.txt").read_text().split() == [wheel.name]

    # What DataflowRunner does with the flag (apiclient.get_container_image_from_options needs the gcp extra):
    image = options.view_as(WorkerOptions).sdk_container_image
    proto = pipeline.to_runner_api(default_environment=DockerEnvironment.from_container_image(image))
    images = {
        beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
        for env in proto.components.environments.values()
        if env.urn == common_urns.environments.DOCKER.urn
    }
    assert images == {IMAGE}


def test_a_remote_model_is_checked_on_the_driver_and_fetched_only_by_the_workers(tmp_path, monkeypatch):
    """The driver reads the manifest and the small files it checks labels with; the weights are copied by the worker
    that loads the model (`fetch_artifact`), never by the machine that builds the job, nor shipped inside it."""
    import tempfile

    from apache_beam.internal import pickler

    from bioserc.pipelines.classifier_handler import ClassifierModelHandler, model_id

    remote = RecordingRemote.PREFIX + str(DEFAULT_MODEL)
    manifest = json.loads((DEFAULT_MODEL / "manifest.json").read_text())
    weights = {Path(rel).name for rel in manifest["files"] if rel.endswith(".onnx")}
    RecordingRemote.opened.clear()
    argv = [str(DEMO), "-o", str(tmp_path / "out"), "--model", remote, *DATAFLOW]
    args, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
    plan = label_pipeline.build(beam.Pipeline(options=runner.pipeline_options(beam_args)), args)
    on_driver = set(RecordingRemote.opened)
    assert "manifest.json" in on_driver and not on_driver & weights
    assert plan.model_id == model_id(remote)

    handler = ClassifierModelHandler(remote, "cpu")
    shipped = pickler.dumps(handler)
    assert len(shipped) < 200_000  # the job carries the path, not the weights
    RecordingRemote.opened.clear()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker-tmp"))  # a worker's empty local disk
    (tmp_path / "worker-tmp").mkdir()
    model = pickler.loads(shipped).load_model()
    assert weights <= set(RecordingRemote.opened)
    assert list(model.labels) == manifest["labels"]
    assert next((tmp_path / "worker-tmp" / "bioserc-models").iterdir()).joinpath("manifest.json").is_file()
