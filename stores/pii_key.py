"""The key of the pseudonyms (``model.pseudonym``): from configuration, or for a local
install the one kept in the home's secrets directory, generated there on first use.

``FRAUDSTREAM_PII_KEY`` set: that key (at least 16 characters), as is. Unset: the file
``pii_key_file`` (default ``<home>/secrets/pii.key``, beside the API keys), readable by its
owner only, created with 32 random bytes (hex) the first time a process needs it. Several
processes starting at once (API workers) end up with the same key: the file is written
under a temporary name and linked into place, which fails for all but the first.

The key is never logged, printed, or put in an error message; only the file's path is.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from model.config import Settings

log = logging.getLogger(__name__)
MIN_LENGTH = 16


class PiiKeyError(RuntimeError):
    """The configured key or its file cannot be used; the message says why, never the key."""


def load(settings: Settings) -> bytes:
    """The pseudonym key, as bytes for ``model.pseudonym``."""
    if settings.pii_key is not None:
        key = settings.pii_key.get_secret_value().strip()  # as the file's is read
        if len(key) < MIN_LENGTH:
            raise PiiKeyError(f"FRAUDSTREAM_PII_KEY is shorter than {MIN_LENGTH} characters")
        return key.encode()
    assert settings.pii_key_file is not None
    return _from_file(settings.pii_key_file)


def _from_file(path: Path) -> bytes:
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the pseudonym key file %s is readable by others (mode %o): "
                    "chmod 600 it", path, mode)
    key = path.read_text().strip()
    if len(key) < MIN_LENGTH:
        raise PiiKeyError(f"the pseudonym key in {path} is shorter than {MIN_LENGTH} "
                          "characters")
    return key.encode()


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and refused if another process got there first
        except FileExistsError:
            return
        log.info("generated a new pseudonym key in %s (keep it: the tokens of e-mails and "
                 "IP addresses in the history depend on it)", path)
    finally:
        tmp.unlink(missing_ok=True)
