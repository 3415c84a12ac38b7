"""The canonical data schema: the one owner of column names and their meaning.

Every loader turns its source format into these columns; everything downstream reads only these.

Interactions (one row per user-item event):
    user_id    str    required
    item_id    str    required; with ``domain`` it names one item
    domain     str    required; an item is keyed by (domain, item_id): the same id in two
                      domains is two different items
    timestamp  int64  epoch seconds (sources may give epoch seconds or ISO 8601 text)
    seq_pos    int64  position in the user's history; used when there is no timestamp
               (one of ``timestamp`` / ``seq_pos`` is required: it orders each history)
    rating     float  optional, any numeric scale
    weight     float  optional, per-example loss weight (default 1)
Other columns (e.g. a dataset's own ``split``/``role``) are kept as they are.

Items (one row per item):
    item_id, domain   required, unique together
    text columns      at least one (default ``title``); the text template builds ``text``
    text              str, what the text encoder reads (built, not read)

Users (optional): ``user_id`` plus any feature columns.
"""

from __future__ import annotations

USER_ID = "user_id"
ITEM_ID = "item_id"
DOMAIN = "domain"
TIMESTAMP = "timestamp"
SEQ_POS = "seq_pos"
RATING = "rating"
WEIGHT = "weight"
TEXT = "text"
TITLE = "title"
SPLIT = "split"
# Items taken off sale (``crossrec catalogue retire``): never recommended, still read in histories.
RETIRED = "retired"

ORDER_COLUMNS = (TIMESTAMP, SEQ_POS)
INTERACTION_REQUIRED = (USER_ID, ITEM_ID, DOMAIN)
INTERACTION_OPTIONAL = (TIMESTAMP, SEQ_POS, RATING, WEIGHT)
ITEM_REQUIRED = (ITEM_ID, DOMAIN)
USER_REQUIRED = (USER_ID,)
ITEM_KEY = (DOMAIN, ITEM_ID)

DEFAULT_TEXT_TEMPLATE = "{title}"

# Values of the ``split`` column written by crossrec's splitters.
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)

# Bookkeeping columns the readers add so that errors can name file and row; never written out.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
SOURCE_LINE = "_source_line"
BOOKKEEPING = (SOURCE_FILE, SOURCE_ROW, SOURCE_LINE)


def order_column(columns) -> str:
    """The column that orders a user's history: ``timestamp`` if present, else ``seq_pos``."""
    for name in ORDER_COLUMNS:
        if name in columns:
            return name
    raise KeyError(f"interactions have neither '{TIMESTAMP}' nor '{SEQ_POS}'")
