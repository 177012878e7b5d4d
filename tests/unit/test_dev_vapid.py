"""``alfred-jobs dev``'s VAPID key: made once, kept private in a file, the same on every start."""

from __future__ import annotations

import stat
from pathlib import Path

from alfred_jobs.service.push import vapid_key
from alfred_jobs.settings import Settings
from alfred_tools.vapid_keys import with_dev_vapid


def test_the_dev_key_is_generated_once_kept_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / ".alfred" / "vapid.pem"
    first, env = with_dev_vapid(Settings(), path)
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (path.parent / ".gitignore").read_text() == "*\n"
    assert env == {"ALFRED_VAPID_PRIVATE_KEY": first.vapid_private_key}
    again, _ = with_dev_vapid(Settings(), path)
    a, b = vapid_key(first), vapid_key(again)
    assert a is not None and b is not None and a.public_key == b.public_key


def test_a_configured_key_wins_and_no_file_is_made(tmp_path: Path) -> None:
    path = tmp_path / "vapid.pem"
    settings = Settings(vapid_secret="from-the-environment")
    assert with_dev_vapid(settings, path) == (settings, {})
    assert not path.exists()
