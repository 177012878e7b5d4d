"""The VAPID key of ``alfred-jobs dev``: generated once, kept in a file, handed to every process.

Browsers bind a push subscription to the application server key it was made with, so the key
must outlive a restart of ``dev``: it is written (mode 0600) to ``.alfred/vapid.pem`` in the working
directory on first use (git-ignored) and read from there afterwards. A key set in the environment
(``ALFRED_VAPID_PRIVATE_KEY`` or ``ALFRED_VAPID_SECRET``) wins and no file is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from alfred_jobs.settings import Settings

DEFAULT_PATH = Path(".alfred") / "vapid.pem"


def dev_vapid_pem(path: Path = DEFAULT_PATH) -> str:
    """The PEM at ``path``, made first if there is none (a fresh P-256 key)."""
    if path.is_file():
        return path.read_text(encoding="ascii")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".gitignore").write_text("*\n", encoding="ascii")  # never committed by accident
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(pem)
    return pem


def with_dev_vapid(settings: Settings, path: Path = DEFAULT_PATH) -> tuple[Settings, dict[str, str]]:
    """``settings`` with the dev key, and the variables that give it to child processes."""
    if settings.vapid_private_key or settings.vapid_secret or settings.vapid_secret_arn:
        return settings, {}
    pem = dev_vapid_pem(path)
    return settings.model_copy(update={"vapid_private_key": pem}), {"ALFRED_VAPID_PRIVATE_KEY": pem}
