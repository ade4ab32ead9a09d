"""``make run`` pins the archive's signing key: one key file in the stack's data dir, created at the first start
and reused at every restart, so all the checkpoints of a dev stack verify with one public key."""

from __future__ import annotations

from pathlib import Path

from tsop_devstack.stack import Stack

from tsop_archive.records.commands import Signer
from tsop_archive.records.main import RecordsSettings


def test_the_stack_gives_the_archive_one_signing_key_across_restarts(tmp_path: Path) -> None:
    def archive_key() -> str:
        stack = Stack(tmp_path / "stack", kafka_bootstrap="127.0.0.1:1", pg_external=True)
        env = stack.service_env("archive")
        assert "TSOP_ARCHIVE_SIGNING_KEY_FILE" in env
        path = Path(env["TSOP_ARCHIVE_SIGNING_KEY_FILE"])
        assert path.is_relative_to(tmp_path / "stack")
        # read as the archive reads its settings, then loaded as it loads its key at start
        s = RecordsSettings(service_name="archive", archive_signing_key_file=path)
        return Signer.load_or_create(s.archive_signing_key_file).key_id

    first = archive_key()
    assert (tmp_path / "stack" / "archive-signing-key.pem").stat().st_mode & 0o777 == 0o600
    assert archive_key() == first  # a restart: the same key
    # other services are not handed the archive's key
    other = Stack(tmp_path / "s2", kafka_bootstrap="127.0.0.1:1", pg_external=True).service_env("intake")
    assert str(tmp_path / "s2" / "archive-signing-key.pem") not in other.values()


def test_an_operator_choice_of_key_file_wins(tmp_path: Path) -> None:
    chosen = tmp_path / "elsewhere.pem"
    stack = Stack(tmp_path / "stack", kafka_bootstrap="127.0.0.1:1", pg_external=True,
                  env={"TSOP_ARCHIVE_SIGNING_KEY_FILE": str(chosen)})
    assert stack.service_env("archive")["TSOP_ARCHIVE_SIGNING_KEY_FILE"] == str(chosen)
