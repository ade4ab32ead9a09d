"""The archive as evidence (§7.2, §7.4): the whole-archive chain and its signed checkpoints, ``verify``,
retention and legal hold, and past states (``?as_of=``)."""
