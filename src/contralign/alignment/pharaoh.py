"""Word-alignment files: parallel text in, Pharaoh links out, gold links with sure/possible.

Formats (those of SimAlign, awesome-align and the Och & Ney / WPT test sets):

- **parallel text**: either one file of ``source ||| target`` lines, or two files with one
  sentence per line (line ``k`` of one translates line ``k`` of the other). Words are separated
  by whitespace (the text is pre-tokenised); an empty line is an empty sentence.
- **Pharaoh links**: one line per sentence pair, space-separated ``i-j`` (source word ``i``,
  target word ``j``). contralign *writes* them 0-indexed, as SimAlign and awesome-align do.
- **gold links**: the same, where ``ipj`` marks a *possible* link and ``i-j`` a *sure* one. Gold
  files of the standard test sets are **1-indexed**; ``read_links(base=1)`` (the default) reads
  them, ``base=0`` reads files contralign wrote. Index 0 in a 1-indexed file is an error
  whose message says so, so a 0-indexed file is never read off by one without a word.

Every mistake is a ``DataError`` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contralign.core.errors import DataError
from contralign.core.io import atomic_file
from contralign.data.lines import check_readable, numbered_lines

# (source word, target word), 0-indexed.
Link = tuple[int, int]
SEPARATOR = "|||"

_LINK = re.compile(r"(\d+)([-p])(\d+)")


@dataclass(frozen=True)
class ParallelCorpus:
    """Sentence pairs as word lists, and where they came from (for messages).

    Attributes:
        source: the words of each source sentence.
        target: the words of each target sentence (``len(target) == len(source)``).
        source_path: the file the source sentences came from (pair ``k`` is its line ``k + 1``).
        target_path: the file of the target sentences (the same file for ``src ||| tgt``).
    """

    source: list[list[str]]
    target: list[list[str]]
    source_path: str = "<source>"
    target_path: str = "<target>"

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise ValueError(f"ParallelCorpus: {len(self.source)} source sentences but "
                             f"{len(self.target)} target sentences")

    def __len__(self) -> int:
        return len(self.source)

    @classmethod
    def of(cls, pairs: Iterable[tuple[Sequence[str], Sequence[str]]]) -> ParallelCorpus:
        """A corpus of in-memory ``(source words, target words)`` pairs."""
        pairs = list(pairs)
        return cls([list(s) for s, _ in pairs], [list(t) for _, t in pairs])


@dataclass(frozen=True)
class GoldAlignment:
    """Reference links per sentence pair.

    Attributes:
        sure: the sure links ``S`` of each pair (0-indexed).
        possible: the possible links ``P`` of each pair, sure links included (``P ⊇ S``).
    """

    sure: list[set[Link]]
    possible: list[set[Link]]

    def __len__(self) -> int:
        return len(self.sure)


# --- reading -----------------------------------------------------------------------------------


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, without their line ends (a BOM is dropped).

    Raises:
        DataError: the file is missing, unreadable, empty, or a line is not valid UTF-8.
    """
    path = Path(path)
    check_readable(path)
    lines = []
    # Only \n ends a line (\r\n too): a lone \r inside a sentence is not a sentence boundary.
    for line in numbered_lines(path, split_cr=False):
        if line.problem is not None:
            raise line.error(path)
        lines.append(line.text.removesuffix("\n").removesuffix("\r"))
    if not any(text.strip() for text in lines):
        raise DataError(path, None, None, "empty file: no sentences")
    return lines


def read_bitext(path: str | Path) -> ParallelCorpus:
    """Read a ``source ||| target`` file (the format of SimAlign and awesome-align).

    Raises:
        DataError: as ``read_lines``, or a line without exactly one ``|||``.
    """
    source, target = [], []
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split(SEPARATOR)
        if len(parts) != 2:
            found = "no" if len(parts) == 1 else str(len(parts) - 1)
            raise DataError(path, number, None, f"expected 'source ||| target', found {found} "
                            f"'{SEPARATOR}' separators")
        source.append(parts[0].split())
        target.append(parts[1].split())
    return ParallelCorpus(source, target, str(path), str(path))


def read_parallel(source_path: str | Path, target_path: str | Path) -> ParallelCorpus:
    """Read two files of one sentence per line (line ``k`` of each is a translation pair).

    Raises:
        DataError: as ``read_lines``, or the two files have different numbers of lines.
    """
    source = read_lines(source_path)
    target = read_lines(target_path)
    if len(source) != len(target):
        shorter, longer = sorted([(len(source), str(source_path)), (len(target), str(target_path))])
        raise DataError(longer[1], shorter[0] + 1, None, f"{longer[0]} lines, but "
                        f"{shorter[1]} has only {shorter[0]}: the files must be line-parallel")
    return ParallelCorpus([s.split() for s in source], [t.split() for t in target],
                          str(source_path), str(target_path))


def parse_links(text: str, path: str | Path, line: int, *, base: Literal[0, 1],
                sizes: tuple[int, int] | None = None) -> tuple[set[Link], set[Link]]:
    """One line of Pharaoh links -> ``(sure, possible)``, 0-indexed; ``possible ⊇ sure``.

    Args:
        text: ``"1-1 2p3 ..."``.
        path, line: where the text came from (for messages).
        base: the index of the first word in the file (1 for gold test sets, 0 for output).
        sizes: ``(source words, target words)`` of the pair, to check indices against.

    Raises:
        DataError: a token that is not ``i-j`` / ``ipj``, an index below ``base``, or one beyond
            the sentence.
    """
    sure: set[Link] = set()
    possible: set[Link] = set()
    for token in text.split():
        match = _LINK.fullmatch(token)
        if match is None:
            raise DataError(path, line, None, f"link {token!r}: expected i-j (sure) or ipj "
                            "(possible) with whole-number word indices")
        i, j = int(match.group(1)) - base, int(match.group(3)) - base
        if i < 0 or j < 0:
            raise DataError(path, line, None, f"link {token!r}: index 0 in a 1-indexed file "
                            "(gold links count words from 1)")
        if sizes is not None:
            for side, index, size in (("source", i, sizes[0]), ("target", j, sizes[1])):
                if index >= size:
                    raise DataError(path, line, None, f"link {token!r}: {side} word "
                                    f"{index + base} is out of range: the {side} sentence "
                                    f"has {size} words")
        possible.add((i, j))
        if match.group(2) == "-":
            sure.add((i, j))
    return sure, possible


def read_links(path: str | Path, *, base: Literal[0, 1] = 1,
               corpus: ParallelCorpus | None = None) -> GoldAlignment:
    """Read a file of Pharaoh links (gold: ``i-j`` sure, ``ipj`` possible).

    Args:
        path: one line per sentence pair.
        base: 1 for the standard gold files (the default), 0 for files contralign wrote.
        corpus: the sentence pairs the links refer to: the line count and every index are
            checked against it.

    Raises:
        DataError: as ``read_lines`` and ``parse_links``, or a line count that differs from the
            corpus's.
    """
    lines = read_lines(path)
    if corpus is not None and len(lines) != len(corpus):
        raise DataError(path, None, None, f"{len(lines)} lines, but {corpus.source_path} has "
                        f"{len(corpus)} sentence pairs: one line of links per pair")
    sure, possible = [], []
    for k, text in enumerate(lines):
        sizes = None if corpus is None else (len(corpus.source[k]), len(corpus.target[k]))
        s, p = parse_links(text, path, k + 1, base=base, sizes=sizes)
        sure.append(s)
        possible.append(p)
    return GoldAlignment(sure, possible)


# --- writing -----------------------------------------------------------------------------------


def format_links(links: Iterable[Link]) -> str:
    """``{(0, 1), (0, 0)}`` -> ``"0-0 0-1"``: 0-indexed, sorted, as SimAlign writes them."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


def write_links(path: str | Path, alignments: Iterable[Iterable[Link]]) -> int:
    """Write one Pharaoh line per sentence pair (0-indexed), atomically.

    The caller checks the path first (``core.outputs.check_output_file``).

    Returns:
        The number of lines written.
    """
    count = 0
    with atomic_file(path) as f:
        for line in _lines_of(alignments):
            f.write(line.encode("utf-8"))
            count += 1
    return count


def _lines_of(alignments: Iterable[Iterable[Link]]) -> Iterator[str]:
    for links in alignments:
        yield format_links(links) + "\n"
