"""The model registry on the filesystem.

Layout under the registry directory::

    models/<version>/model.joblib     the fitted estimator
    models/<version>/metadata.json    version, training window, features, metrics, sha256
    CURRENT                           the promoted version's name (replaced atomically)

Promotion is one atomic rename of ``CURRENT``, so a reader sees the old or the new
version, never half of either.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["features"])

    def load_estimator(self) -> Any:
        """The fitted estimator, after checking its bytes against the recorded sha256."""
        blob = (self.path / MODEL_FILE).read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != self.metadata["sha256"]:
            raise RegistryError(
                f"model {self.version}: sha256 {digest} does not match metadata "
                f"{self.metadata['sha256']}; refusing to load a modified model"
            )
        return joblib.load(self.path / MODEL_FILE)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"

    def new_version_name(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"v{stamp}"

    def register(self, estimator: Any, metadata: dict[str, Any]) -> ModelVersion:
        """Write a new version (not promoted). ``metadata`` must list its ``features``."""
        if not metadata.get("features"):
            raise RegistryError("metadata must list the model's features")
        version = self.new_version_name()
        final = self.models / version
        self.models.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.models, prefix=f".{version}."))
        joblib.dump(estimator, staging / MODEL_FILE)
        blob = (staging / MODEL_FILE).read_bytes()
        meta = {
            **metadata,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        os.replace(staging, final)
        return ModelVersion(version, final, meta)

    def get(self, version: str) -> ModelVersion:
        path = self.models / version
        meta_path = path / METADATA_FILE
        if not meta_path.is_file():
            raise RegistryError(f"no model version {version!r} in {self.models}")
        return ModelVersion(version, path, json.loads(meta_path.read_text()))

    def versions(self) -> list[ModelVersion]:
        if not self.models.is_dir():
            return []
        return [
            self.get(p.name)
            for p in sorted(self.models.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]

    def current_version(self) -> str | None:
        try:
            return (self.root / CURRENT_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def current(self) -> ModelVersion | None:
        version = self.current_version()
        return self.get(version) if version else None

    def promote(self, version: str) -> ModelVersion:
        mv = self.get(version)
        _atomic_write(self.root / CURRENT_FILE, (version + "\n").encode())
        return mv
