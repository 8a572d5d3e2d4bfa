"""Word alignment: contextual subword vectors of a text tower -> Pharaoh links, and AER.

SimAlign's ArgMax, IterMax and Match (arXiv:2004.08728) and awesome-align's softmax extraction
(arXiv:2101.08231) on the hidden states of any layer of a transformer text tower; reading and
writing Pharaoh files (``pharaoh``); precision, recall, F1 and AER with sure and possible links
(``metrics``).
"""

from __future__ import annotations

from contralign.alignment.aligner import (
    DEFAULT_CENTER,
    DEFAULT_LAYER,
    DEFAULT_LEVEL,
    DEFAULT_METHOD,
    LEVELS,
    AlignSetting,
    Level,
    align_corpus,
    align_grid,
    align_pair,
    all_settings,
    check_layer,
    check_setting,
    default_layer,
    num_layers,
    unit_vectors,
    word_links,
)
from contralign.alignment.embeddings import WordPieces, piece_states, tokenize_words
from contralign.alignment.extraction import (
    METHODS,
    Method,
    argmax_links,
    extract,
    itermax_links,
    match_links,
    softmax_links,
)
from contralign.alignment.metrics import AlignmentScores, alignment_scores
from contralign.alignment.pharaoh import (
    GoldAlignment,
    Link,
    ParallelCorpus,
    format_links,
    parse_links,
    read_bitext,
    read_links,
    read_parallel,
    write_links,
)

__all__ = [
    "DEFAULT_CENTER",
    "DEFAULT_LAYER",
    "DEFAULT_LEVEL",
    "DEFAULT_METHOD",
    "LEVELS",
    "METHODS",
    "AlignSetting",
    "AlignmentScores",
    "GoldAlignment",
    "Level",
    "Link",
    "Method",
    "ParallelCorpus",
    "WordPieces",
    "align_corpus",
    "align_grid",
    "align_pair",
    "all_settings",
    "alignment_scores",
    "argmax_links",
    "check_layer",
    "check_setting",
    "default_layer",
    "extract",
    "format_links",
    "itermax_links",
    "match_links",
    "num_layers",
    "parse_links",
    "piece_states",
    "read_bitext",
    "read_links",
    "read_parallel",
    "softmax_links",
    "tokenize_words",
    "unit_vectors",
    "word_links",
    "write_links",
]
