"""The exported model folder: one versioned unit, its file names, and how a consumer finds what it holds.

``prn-export`` writes one folder per model, versioned the way Triton model repositories are::

    OUT/manifest.json                 the switch: which version is the model, every file with its sha256
    OUT/versions/v000003/             the files of that version:
        model.onnx, model.fp16.onnx, model.int8.onnx      ONNX Runtime (same I/O, precision in the graph)
        model.int8.cpu.onnx                               the CPU flavour: INT8 with U8 activations, ONNX Runtime
                                                          on a CPU only (written when gated and measured faster)
        model.trt.onnx, model.<fp16|int8>.trt.onnx        TensorRT plugin variants (not for ONNX Runtime)
        model.<fp32|fp16|int8>.engine (+ .engine.json)    TensorRT engines and their sidecars
        tensorrt.timing_cache                             TensorRT's timing cache, shared by the builds
        export_report.json, export_report.md              what was exported, accuracy per precision

A new export is written into ``OUT/versions/.staging-*``, renamed to the next version and
published by replacing ``manifest.json`` (one atomic rename): after a crash at any point the
folder is wholly the old export or wholly the new one. Older versions, leftovers of killed
exports and the files of the flat layout used before versioning are then removed.

Readers go through :func:`resolve_model_folder` (or :func:`find_model_files`), which verifies the
manifest: a listed file that is missing, modified or stale, or a file that is not listed, is a
one-line error naming it, so nothing ever runs a model other than the manifest's. A folder
without a manifest (the flat layout of earlier exports, or files placed by hand) is read as it
is. The checkpoint (PyTorch and CuPy-fused engines) is ``OUT/checkpoint.pt`` or the file the
export recorded, used only if its sha256 is the recorded one. stdlib only.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError, first_line
from prn_edge.io import file_sha256, fsync_dir, write_json_atomic

__all__ = ["CHECKPOINT", "CPU_INT8_ONNX", "ENGINE_SUFFIXES", "MANIFEST", "PRECISIONS", "REPORT_JSON", "REPORT_MD",
           "TIMING_CACHE", "ModelFiles", "ModelFolder", "find_model_files", "new_staging", "precision_of", "publish",
           "read_manifest", "recorded_checkpoint", "remove_leftovers", "resolve_model_folder"]

PRECISIONS = ("fp32", "fp16", "int8")
CHECKPOINT = "checkpoint.pt"
REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"
TIMING_CACHE = "tensorrt.timing_cache"
ENGINE_SUFFIXES = (".engine", ".plan")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "prn-edge-model-folder"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"
_VERSION = re.compile(r"v(\d{6,})")
# What an export writes: in a folder of the flat layout these are the previous export's files.
_EXPORT_FILE = re.compile(r"(model(\.(fp16|int8))?(\.trt)?\.onnx|model\.int8\.cpu\.onnx|"
                          r"model\.(fp32|fp16|int8)\.(engine|plan)(\.json)?|"
                          r"export_report\.(json|md)|tensorrt\.timing_cache)")
_ONNX = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
CPU_INT8_ONNX = "model.int8.cpu.onnx"


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PRNError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def precision_of(path: str | os.PathLike) -> str:
    """``model.fp16.onnx`` -> fp16; ``model.int8.engine`` -> int8; anything else -> fp32."""
    suffixes = [s.lstrip(".") for s in Path(path).suffixes[:-1]]
    return next((s for s in reversed(suffixes) if s in ("fp16", "int8")), "fp32")


@dataclass(frozen=True)
class ModelFolder:
    """The paths of one model folder (they need not exist yet: ``prn-export`` writes them).

    Attributes:
        root: the folder holding the files (for a published export: its current version folder).
        manifest: the verified manifest (None: a folder being written, or one without a manifest).
    """

    root: Path
    manifest: dict[str, Any] | None = None

    def __init__(self, root: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())
        object.__setattr__(self, "manifest", manifest)

    def onnx(self, precision: str) -> Path:
        """The ONNX Runtime model of a precision (``model.onnx`` for FP32)."""
        return self.root / _ONNX[_check_precision(precision)]

    @property
    def cpu_int8(self) -> Path:
        """The CPU flavour: INT8 with U8 activations, for ONNX Runtime on a CPU (not TensorRT)."""
        return self.root / CPU_INT8_ONNX

    def trt_onnx(self, precision: str) -> Path:
        """Its TensorRT plugin variant: ``model.onnx`` -> ``model.trt.onnx``."""
        return self.root / (_ONNX[_check_precision(precision)].removesuffix(".onnx") + ".trt.onnx")

    def engine(self, precision: str) -> Path:
        """The TensorRT engine of a precision."""
        return self.root / f"model.{_check_precision(precision)}.engine"

    @staticmethod
    def sidecar(engine: str | os.PathLike) -> Path:
        """An engine's sidecar: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
        engine = Path(engine)
        return engine.with_name(engine.name + ".json")

    @property
    def timing_cache(self) -> Path:
        return self.root / TIMING_CACHE

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT


def recorded_checkpoint(folder: str | os.PathLike, layout: ModelFolder | None = None) -> tuple[Path | None, str]:
    """The checkpoint a model folder offers, and where it came from (or why there is none).

    ``folder/checkpoint.pt`` first, else the path the export recorded (the manifest's, or
    ``export_report.json``'s in a folder without one; relative paths are taken from the
    folder). Either is used only when its sha256 is the one the export recorded: a checkpoint
    replaced since would run another model than the folder's.

    Args:
        folder: the model folder.
        layout: its :func:`resolve_model_folder` when the caller has it already.

    Raises:
        PRNError: the folder's manifest does not verify (see :func:`resolve_model_folder`).
    """
    root = Path(folder).expanduser()
    layout = layout or resolve_model_folder(root)
    recorded, expected = _recorded(layout)
    candidates = [(ModelFolder(root).checkpoint, "the model folder")]
    if recorded:
        path = Path(recorded).expanduser()
        candidates.append((path if path.is_absolute() else root / path, "the export's record"))
    why = [f"no {CHECKPOINT} in {root}" + ("" if recorded else " and the export recorded no checkpoint")]
    for path, where in candidates:
        if not path.is_file():
            if where != "the model folder":
                why.append(f"the checkpoint {path} recorded by the export is gone")
            continue
        if expected and file_sha256(path) != expected:
            why.append(f"{path} is not the checkpoint this model was exported from (sha256 differs)")
            continue
        return path, where
    return None, "; ".join(why)


def _recorded(layout: ModelFolder) -> tuple[str | None, str | None]:
    """(checkpoint path, its sha256) as the export recorded them."""
    if layout.manifest is not None:
        record = layout.manifest.get("checkpoint") or {}
        return record.get("path"), record.get("sha256")
    try:
        report = json.loads(layout.report_json.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(report, dict):
        return None, None
    path, sha = report.get("checkpoint"), report.get("checkpoint_sha256")
    return (path if isinstance(path, str) and path else None), (sha if isinstance(sha, str) and sha else None)


# --------------------------------------------------------------------------- the manifest
def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """``root/manifest.json`` as a dict, or None when there is none.

    Raises:
        PRNError: a manifest that is not readable JSON or not a PRN Edge model-folder manifest.
    """
    path = Path(root).expanduser() / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PRNError(f"{path}: unreadable manifest ({first_line(exc)}); export the model again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict) or not _VERSION.fullmatch(str(manifest.get("version"))):
        raise PRNError(f"{path}: not a PRN Edge model-folder manifest; export the model again")
    return manifest


def resolve_model_folder(root: str | os.PathLike, *, verify: bool = True) -> ModelFolder:
    """The folder whose files are the model: the manifest's version, verified, or ``root`` itself.

    Args:
        root: the model folder (what ``--model`` names).
        verify: check every listed file's size and sha256 (False: presence only).

    Raises:
        PRNError: the version is missing, or a file is missing, modified or not listed: one line
            naming it.
    """
    root = Path(root).expanduser()
    manifest = read_manifest(root)
    if manifest is None:
        return ModelFolder(root)
    version = root / VERSIONS / manifest["version"]
    if not version.is_dir():
        raise PRNError(f"{version}: the version {MANIFEST} names is missing; export the model again")
    listed = manifest["files"]
    present = {p.name for p in version.iterdir()}
    for name in sorted(set(listed) - present):
        raise PRNError(f"{version / name}: listed in {MANIFEST} but missing; export the model again")
    for name in sorted(present - set(listed)):
        raise PRNError(f"{version / name}: not part of this export (not in {MANIFEST}); remove it or export again")
    if verify:
        for name, record in sorted(listed.items()):
            path = version / name
            if path.stat().st_size != record.get("bytes") or file_sha256(path) != record.get("sha256"):
                raise PRNError(f"{path}: modified since it was exported (its sha256 is not the one in {MANIFEST}); "
                               "export the model again")
    return ModelFolder(version, manifest)


def new_staging(root: str | os.PathLike) -> Path:
    """A fresh staging folder for an export into ``root`` (``root/versions/.staging-*``)."""
    versions = Path(root).expanduser() / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=versions))


def publish(root: str | os.PathLike, staging: Path, *, checkpoint: str | None, checkpoint_sha256: str | None,
            step=None) -> Path:
    """Make the complete export in ``staging`` the model of ``root``, atomically, then tidy up.

    The staging folder becomes the next version (a rename within ``root/versions``); the new
    ``manifest.json`` (every file's size and sha256, the checkpoint) replaces the old one in
    one rename: that is the switch. Then older versions, staging leftovers and the flat
    layout's files are removed (a crash there leaves only garbage that the next export removes).

    Args:
        root: the model folder.
        staging: from :func:`new_staging`, holding every file of the export.
        checkpoint, checkpoint_sha256: the checkpoint the export came from.
        step: called with a name before each step (progress, and the kill-point tests).

    Returns:
        The new version's folder.
    """
    root = Path(root).expanduser()
    step = step or (lambda _name: None)
    versions = root / VERSIONS
    numbers = [int(m.group(1)) for p in versions.iterdir() if (m := _VERSION.fullmatch(p.name))]
    current = read_manifest(root)
    if current is not None:
        numbers.append(int(current["version"][1:]))
    name = f"v{max(numbers, default=0) + 1:06d}"
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(staging.iterdir())}
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "version": name,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "checkpoint": {"path": checkpoint, "sha256": checkpoint_sha256}, "files": files}
    step("version")
    version = versions / name
    os.rename(staging, version)
    fsync_dir(versions)
    step("switch")
    write_json_atomic(root / MANIFEST, manifest)
    fsync_dir(root)
    step("clean")
    clean_model_folder(root, keep=name)
    return version


def clean_model_folder(root: str | os.PathLike, *, keep: str | None = None) -> list[str]:
    """Remove what is not the current export: other versions, staging leftovers, flat-layout files.

    Only called by an export (which holds the folder's lock); returns the names removed.
    """
    root = Path(root).expanduser()
    keep = keep or (read_manifest(root) or {}).get("version")
    removed = remove_leftovers(root)
    versions = root / VERSIONS
    if keep is not None and versions.is_dir():
        for path in versions.iterdir():
            if path.name != keep:
                _remove(path)
                removed.append(f"{VERSIONS}/{path.name}")
        for path in root.iterdir():
            if path.is_file() and _EXPORT_FILE.fullmatch(path.name):
                _remove(path)
                removed.append(path.name)
    with contextlib.suppress(OSError):
        fsync_dir(root)
    return removed


def remove_leftovers(root: str | os.PathLike) -> list[str]:
    """Remove the staging folders of exports that were killed (safe while the export lock is held)."""
    root = Path(root).expanduser()
    found = list((root / VERSIONS).glob(STAGING_PREFIX + "*")) if (root / VERSIONS).is_dir() else []
    found += [p for p in root.glob(".prn-export-*") if p.is_dir()]    # staging of the flat layout
    for path in found:
        _remove(path)
    return [str(p.relative_to(root)) for p in found]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ModelFiles:
    """The runnable files of one model.

    Attributes:
        source: what ``--model`` named.
        onnx: ONNX Runtime models by precision.
        engines: TensorRT engines by precision.
        checkpoint: the checkpoint (PyTorch and CuPy-fused engines), if there is one.
        checkpoint_note: where the checkpoint came from, or why there is none.
        cpu_int8: the CPU flavour (``model.int8.cpu.onnx``), if the export wrote one.
    """

    source: Path
    onnx: dict[str, Path] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    checkpoint_note: str = ""
    cpu_int8: Path | None = None


def find_model_files(model: str | os.PathLike) -> ModelFiles:
    """The files of a model folder, or the one file ``model`` names.

    Raises:
        PRNError: nothing there, or nothing runnable in it.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        layout = resolve_model_folder(path)
        onnx = {precision_of(p): p for p in sorted(layout.root.glob("model*.onnx"))
                if ".trt." not in p.name and p.name != CPU_INT8_ONNX}
        engines = {precision_of(p): p for p in sorted(layout.root.iterdir()) if p.suffix in ENGINE_SUFFIXES}
        checkpoint, note = recorded_checkpoint(path, layout)
        cpu_int8 = layout.cpu_int8 if layout.cpu_int8.is_file() else None
        files = ModelFiles(path, onnx, engines, checkpoint, note, cpu_int8)
        if not (files.onnx or files.engines or files.checkpoint):
            raise PRNError(f"{path}: no model here (expected model.onnx, model.<precision>.engine or "
                           f"{CHECKPOINT}, as prn-export writes them) (--model)")
        return files
    if not path.is_file():
        raise PRNError(f"{path}: no such model folder or file (--model)")
    if path.suffix == ".onnx":
        if ".trt." in path.name:
            raise PRNError(f"{path}: a TensorRT plugin variant, which ONNX Runtime cannot run; give its "
                           ".engine, or model.onnx (--model)")
        return ModelFiles(path, onnx={precision_of(path): path})
    if path.suffix in ENGINE_SUFFIXES:
        return ModelFiles(path, engines={precision_of(path): path})
    if path.suffix == ".pt":
        return ModelFiles(path, checkpoint=path, checkpoint_note="--model")
    raise PRNError(f"{path}: not a model file (.onnx, .engine or .pt) (--model)")
