"""The archive-as-evidence settings, and ``verify`` for auditors on the command line.

``python -m tsop_archive.records.main verify [--from SEQ] [--to SEQ] [--public-key PEM ...]`` recomputes the
whole-archive chain over the range against the archive's database (the ``TSOP_PG_*`` variables, as the
service reads them), checks every signed checkpoint in it, and names the first broken link. Exit status 0
when the range verifies, 1 when a link is broken, 2 on a usage error, 3 when it could not verify (the database
unreachable, a key file unreadable or not a key): never "broken" for a fault of its own. With ``--public-key``
the checkpoints must be signed by one of the keys given (pinned offline), not merely by a key the archive
published. With ``--expect N:LINK`` (a checkpoint kept from an earlier audit) checkpoint N must still be there,
name that link, and be reached: a chain whose tail was deleted with its last checkpoints no longer verifies.

``python -m tsop_archive.records.main rebuild-stats`` rebuilds the statistics' ticket facts and per-day cells from
the archived log (``tsop_archive.stats.projection.rebuild``), with the archive stopped: after a fix of the fold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import asyncpg

from tsop_events.settings import ServiceSettings


class RecordsSettings(ServiceSettings):
    """What the archive-as-evidence part of the archive reads."""

    archive_signing_key_file: Path | None = None
    """PEM file of the Ed25519 key that signs the archive's checkpoints; created (mode 0600) when missing.
    Unset: a new key at each start (its public key is still published at `GET /v1/archive/keys`)."""
    archive_chain_seconds: float = 0.5
    """The shortest time between two rounds linking new records into the whole-archive chain (a round runs when
    the consumers stored records, or at least each second for a due checkpoint)."""
    archive_checkpoint_every: int = 10000
    """Records linked between two signed checkpoints (at most)."""
    archive_checkpoint_seconds: float = 60.0
    """Longest time between two signed checkpoints while records arrive."""
    archive_retention_seconds: float = 60.0
    """How often retention looks for records past their period (a durable timer: derived from the store)."""


async def _verify(args: argparse.Namespace) -> int:
    from tsop_archive.records.commands import raw_public, verify
    from tsop_archive.records.domain import key_id

    s = RecordsSettings(service_name=args.service_name)
    keys = None
    # what keeps it from verifying at all (a key file, the database) exits COULD_NOT_VERIFY; what the archive
    # holds (a table gone, a published key that is not one) is the archive's state: it fails the verification
    try:
        if args.public_key:
            raws = [raw_public(Path(p).read_bytes()) for p in args.public_key]
            keys = {key_id(r): r for r in raws}
        pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=2)
    except (OSError, ValueError, asyncpg.PostgresConnectionError, asyncpg.InvalidCatalogNameError,
            asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        print(f"verify: could not verify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return COULD_NOT_VERIFY
    try:
        v = await verify(pool, args.from_seq, args.to_seq, keys, args.expect)
    finally:
        await pool.close()
    print(json.dumps({
        "ok": v.ok, "from_seq": v.from_seq, "to_seq": v.last_seq, "checked": v.checked, "intact": v.intact,
        "expired": v.expired, "checkpoints": v.checkpoints, "last_link": v.last_link.hex(),
        "broken": v.broken.view() if v.broken else None,
    }, indent=2))
    return 0 if v.ok else 1


async def _rebuild_stats(args: argparse.Namespace) -> int:
    from tsop_archive.stats.projection import rebuild
    from tsop_events.topics import Topic

    s = RecordsSettings(service_name=args.service_name)
    pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=2)
    try:
        folded = await rebuild(pool, Topic.tickets.qualified(s.topic_prefix))
    finally:
        await pool.close()
    print(json.dumps({"folded_events": folded}))
    return 0


def _expect(text: str) -> tuple[int, bytes]:
    from tsop_archive.records.domain import parse_expect

    try:
        return parse_expect(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--expect takes N:LINK (64 hex digits): {e}") from e


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tsop_archive.records.main", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="recompute the whole-archive chain and name the first broken link")
    v.add_argument("--from", dest="from_seq", type=int, default=1)
    v.add_argument("--to", dest="to_seq", type=int, default=2**62)
    v.add_argument("--public-key", action="append", default=[], help="a pinned Ed25519 public key (PEM)")
    v.add_argument("--expect", type=_expect, default=None, metavar="N:LINK",
                   help="a checkpoint kept from an earlier audit (number:link hex): it must still be there, alike")
    v.add_argument("--service-name", default="archive", help="the archive's name (its database tsop_<name>)")
    r = sub.add_parser("rebuild-stats", help="rebuild the statistics' ticket facts and cells from the archived log "
                                            "(with the archive stopped)")
    r.add_argument("--service-name", default="archive", help="the archive's name (its database tsop_<name>)")
    args = parser.parse_args(argv)
    if args.command == "rebuild-stats":
        sys.exit(asyncio.run(_rebuild_stats(args)))
    if args.from_seq < 1 or args.to_seq < args.from_seq:
        parser.error("--from must be at least 1 and --to not below it")
    sys.exit(asyncio.run(_verify(args)))


COULD_NOT_VERIFY = 3


if __name__ == "__main__":
    main()
