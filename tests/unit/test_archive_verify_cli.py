"""The auditors' ``verify`` command never reports a fault of its own as a broken chain: exit status 3, with the
cause on stderr, when it cannot verify at all (1 is kept for a broken link)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsop_archive.records.main import COULD_NOT_VERIFY, main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


def test_an_unreachable_database_is_not_a_broken_chain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TSOP_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("TSOP_PG_PORT", "9")  # discard: nothing listens
    code, err = run(["verify"], capsys)
    assert code == COULD_NOT_VERIFY == 3 and "could not verify" in err


def test_a_missing_or_bad_key_file_is_not_a_broken_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TSOP_PG_PORT", "9")
    code, err = run(["verify", "--public-key", str(tmp_path / "gone.pem")], capsys)
    assert code == 3 and "gone.pem" in err
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    code, err = run(["verify", "--public-key", str(bad)], capsys)
    assert code == 3 and "could not verify" in err
