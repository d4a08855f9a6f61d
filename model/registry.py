"""The model registry on the filesystem.

Layout under the registry directory::

    models/<version>/model.joblib     the fitted estimator
    models/<version>/metadata.json    version, training window, features, metrics, sha256
    CURRENT                           the champion's name (replaced atomically)
    CHALLENGER                        the version scored in shadow, if any
    promotions.jsonl                  every change of champion: when, what, who, why
    runs/<run>.json                   every retraining run: trigger, window, metrics,
                                      decision, duration

Promotion is one atomic rename of ``CURRENT``, so a reader sees the old or the new
version, never half of either. Rollback promotes the champion before the current one,
as the promotion log tells.
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
CHALLENGER_FILE = "CHALLENGER"
PROMOTIONS_FILE = "promotions.jsonl"
RUNS_DIR = "runs"
WORKER_STATUS_FILE = "retrain.status.json"


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


def _is_rollback(entry: dict[str, Any]) -> bool:
    # logs written before the flag existed say so in their reason
    return bool(entry.get("rollback")) or str(entry.get("why", "")).startswith("rollback from")


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

    def promote(self, version: str, by: str = "cli", why: str = "",
                rollback: bool = False) -> ModelVersion:
        """Make ``version`` the champion; logged. A challenger promoted leaves the shadow."""
        mv = self.get(version)
        previous = self.current_version()
        _atomic_write(self.root / CURRENT_FILE, (version + "\n").encode())
        if self.challenger_version() == version:
            self.clear_challenger()
        self._log_promotion({"version": version, "previous": previous, "by": by, "why": why,
                             **({"rollback": True} if rollback else {})})
        return mv

    def promotions(self) -> list[dict[str, Any]]:
        """Champion changes, oldest first."""
        try:
            lines = (self.root / PROMOTIONS_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def rollback(self, by: str = "cli", why: str = "") -> ModelVersion:
        """Promote the champion that preceded the current one. Rollbacks walk back: the
        current one's own rollback entries are passed over, so a second rollback goes one
        champion further back, never forward again to the one just rolled back."""
        current = self.current_version()
        for entry in reversed(self.promotions()):
            if entry["version"] != current or _is_rollback(entry):
                continue
            if entry.get("previous"):
                note = f"rollback from {current}" + (f": {why}" if why else "")
                return self.promote(entry["previous"], by, note, rollback=True)
            break
        raise RegistryError(f"no earlier champion to roll back to (current: {current})")

    def _log_promotion(self, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": datetime.now(UTC).isoformat(), **entry}) + "\n"
        with open(self.root / PROMOTIONS_FILE, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    # ---- the challenger in shadow ------------------------------------------------------
    def challenger_version(self) -> str | None:
        try:
            return (self.root / CHALLENGER_FILE).read_text().split()[0] or None
        except (FileNotFoundError, IndexError):
            return None

    def challenger_since(self) -> float | None:
        """When the challenger entered the shadow (epoch seconds of the clock that put it
        there)."""
        try:
            return float((self.root / CHALLENGER_FILE).read_text().split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def set_challenger(self, version: str, since: float) -> ModelVersion:
        mv = self.get(version)
        if version == self.current_version():
            raise RegistryError(f"{version} is the champion; a challenger must differ")
        _atomic_write(self.root / CHALLENGER_FILE, f"{version} {since!r}\n".encode())
        return mv

    def clear_challenger(self) -> None:
        (self.root / CHALLENGER_FILE).unlink(missing_ok=True)

    # ---- retraining runs ---------------------------------------------------------------
    def record_run(self, run: dict[str, Any]) -> None:
        """Write (or rewrite) one retraining run's record, keyed by ``run['run']``."""
        (self.root / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / RUNS_DIR / f"{run['run']}.json",
                      json.dumps(run, indent=2, default=str).encode())

    def write_worker_status(self, status: dict[str, Any]) -> None:
        """The retrain worker's last tick: when, at what clock, what it did."""
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / WORKER_STATUS_FILE,
                      json.dumps(status, default=str).encode())

    def worker_status(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads((self.root / WORKER_STATUS_FILE).read_text())
            return status
        except FileNotFoundError:
            return None

    def runs(self, last: int | None = None) -> list[dict[str, Any]]:
        """Retraining runs, oldest first."""
        directory = self.root / RUNS_DIR
        if not directory.is_dir():
            return []
        paths = sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))
        if last is not None:
            paths = paths[-last:]
        return [json.loads(p.read_text()) for p in paths]
