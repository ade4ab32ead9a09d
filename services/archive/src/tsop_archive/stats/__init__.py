"""The statistics of §7.3: figures folded from the topics (``projection``), computed as ``domain`` defines
them, answered, exported and drawn (``api``, and the page in ``page/``)."""
