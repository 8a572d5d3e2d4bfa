"""Word alignment: extraction methods against naive loops, subword -> word merging on tricky
tokenisations, the batched aligner against a plain per-pair pipeline, Pharaoh I/O, AER/F1 against
hand-computed values, and the real en-fr / ro-en test sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.reference_alignment import (
    naive_argmax,
    naive_itermax,
    naive_match,
    naive_softmax,
    plain_align,
)

from contralign.alignment import (
    AlignSetting,
    GoldAlignment,
    ParallelCorpus,
    align_corpus,
    align_grid,
    alignment_scores,
    all_settings,
    argmax_links,
    default_layer,
    extract,
    format_links,
    itermax_links,
    match_links,
    parse_links,
    read_bitext,
    read_links,
    read_parallel,
    softmax_links,
    tokenize_words,
    unit_vectors,
    word_links,
    write_links,
)
from contralign.core.errors import ConfigError, DataError

SHAPES = [(1, 1), (1, 4), (4, 1), (2, 3), (3, 3), (4, 6), (7, 5), (6, 6)]


def _pairs(links: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(links), strict=True)}


def _random(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


# --- extraction against naive loops --------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(5))
def test_argmax_and_itermax_match_naive_loops(shape, seed):
    sim = _random(shape, seed)
    assert _pairs(argmax_links(sim)) == naive_argmax(sim)
    assert _pairs(itermax_links(sim)) == naive_itermax(sim)


@pytest.mark.parametrize("shape", [s for s in SHAPES if max(s) <= 7])
@pytest.mark.parametrize("seed", range(3))
def test_match_is_the_best_one_to_one_assignment(shape, seed):
    sim = _random(shape, seed)
    links = match_links(sim)
    assert _pairs(links) == naive_match(sim)
    assert links.sum() == min(shape)
    assert (links.sum(axis=0) <= 1).all() and (links.sum(axis=1) <= 1).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 8.0, 40.0])
def test_softmax_matches_naive_loops(shape, scale):
    scores = _random(shape, int(scale)) * scale
    assert _pairs(softmax_links(scores)) == naive_softmax(scores)


def test_itermax_aligns_a_word_that_argmax_leaves_out():
    # Row 1's best column is 0, but column 0 prefers row 0: ArgMax leaves row 1 unaligned.
    # Round 2 scores (1, 0) at 0.9 * 0.8 = 0.72 (row 1 free, column 0 taken) above (1, 1) = 0.3.
    sim = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.1, 0.2, 0.9]])
    assert _pairs(argmax_links(sim)) == {(0, 0), (2, 2)}
    assert _pairs(itermax_links(sim)) == {(0, 0), (1, 0), (2, 2)}
    assert _pairs(itermax_links(sim, rounds=1)) == {(0, 0), (2, 2)}


def test_itermax_leaves_small_matrices_to_argmax():
    sim = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.3]])  # 2 rows: SimAlign returns ArgMax
    assert _pairs(itermax_links(sim)) == _pairs(argmax_links(sim)) == {(0, 0)}


def test_softmax_threshold_known_answers():
    scores = np.array([[10.0, 0.0], [0.0, 10.0]])  # e^-10 ≈ 4.5e-5 < 1e-3: off-diagonal out
    assert _pairs(softmax_links(scores)) == {(0, 0), (1, 1)}
    assert _pairs(softmax_links(np.zeros((2, 3)))) == {(i, j) for i in range(2) for j in range(3)}
    assert not softmax_links(scores, threshold=1.0).any()


@pytest.mark.parametrize("method", ["argmax", "itermax", "match", "softmax"])
def test_empty_matrices_have_no_links(method):
    for shape in [(0, 3), (3, 0), (0, 0)]:
        assert extract(np.zeros(shape), method).shape == shape


def test_unknown_method_is_a_value_error():
    with pytest.raises(ValueError, match="bogus"):
        extract(np.zeros((2, 2)), "bogus")  # type: ignore[arg-type]


# --- subwords -> words ---------------------------------------------------------------------------


def test_word_links_merge_subword_links_into_word_pairs():
    source_words = np.array([0, 0, 1, 3])  # word 0 has two pieces; word 2 none
    target_words = np.array([0, 1, 1])
    unit = np.zeros((4, 3), dtype=bool)
    unit[0, 1] = unit[1, 2] = True  # both pieces of source word 0 -> target word 1: one link
    unit[3, 0] = True
    assert word_links(unit, source_words, target_words) == {(0, 1), (3, 0)}


def test_word_level_vectors_are_the_means_of_their_pieces():
    pieces = tokenize_words(_bert_tokenizer(), [["unbelievably", "", "cat"]], max_length=32)[0]
    states = torch.arange(pieces.n_pieces * 2, dtype=torch.float64).reshape(-1, 2)
    vectors, words = unit_vectors(states, pieces, "word")
    assert words.tolist() == [0, 2]  # the empty word has no vector
    n0 = int((pieces.word_of_piece == 0).sum())
    assert torch.allclose(vectors[0], states[:n0].mean(dim=0))
    assert torch.allclose(vectors[1], states[n0:].mean(dim=0))


def _bert_tokenizer():
    from transformers import AutoTokenizer

    from contralign.encoders.resolve import DEFAULT_MODEL, resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


def _check_pieces_word_by_word(tokenizer, words):
    """Each word's pieces are what tokenizing that word alone gives (SimAlign's way)."""
    (pieces,) = tokenize_words(tokenizer, [words], max_length=64)
    alone = tokenizer(list(words), add_special_tokens=False)["input_ids"]
    expected = [w for w, ids in enumerate(alone) for _ in ids]
    assert pieces.word_of_piece.tolist() == expected
    assert [pieces.input_ids[p] for p in pieces.positions] == [i for ids in alone for i in ids]
    special = set(range(len(pieces.input_ids))) - set(pieces.positions.tolist())
    assert all(pieces.input_ids[p] in tokenizer.all_special_ids for p in special)
    return pieces, alone


def test_tricky_words_of_a_wordpiece_tokenizer():
    tokenizer = _bert_tokenizer()
    words = ["Unbelievably", "", ",", "state-of-the-art", "\U0001f600", "cat", "..."]
    pieces, alone = _check_pieces_word_by_word(tokenizer, words)
    assert len(alone[0]) > 1 and alone[1] == []  # several pieces; an empty word has none
    assert tokenizer.convert_ids_to_tokens(alone[4]) == ["[UNK]"]  # kept: it is the word's
    assert pieces.n_words == len(words) and 1 not in pieces.word_of_piece


def _sentencepiece_tokenizer():
    """A tiny Unigram tokenizer with XLM-R's pre-tokenisation: '▁' marks a word start and
    exists as a piece of its own, so '«' becomes ['▁', '«']; a zero-width space becomes a
    space, as in multilingual-e5's normaliser, leaving a word that is a lone '▁'; a soft
    hyphen is deleted, leaving a word with no piece at all."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0),
             ("«", -3.0), ("▁ch", -2.0), ("at", -2.0), ("▁chat", -1.0), ("s", -2.5),
             ("▁le", -1.5), (".", -2.0)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.normalizer = normalizers.Sequence([normalizers.Replace("\u200b", " "),
                                               normalizers.Replace("\u00ad", "")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
                                   sep_token="</s>")


def test_tricky_words_of_a_sentencepiece_tokenizer():
    tokenizer = _sentencepiece_tokenizer()
    words = ["le", "«", "chats", "\u200b", ".", "\u00ad", "chat"]
    pieces, alone = _check_pieces_word_by_word(tokenizer, words)
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in alone]
    assert tokens[1] == ["▁", "«"] and tokens[4] == ["▁", "."]  # a lone ▁ starts the word
    assert tokens[3] == ["▁"]  # a word that is nothing but ▁: still a word with one piece
    assert tokens[5] == []  # deleted by the normaliser: no piece, never aligned
    assert pieces.word_of_piece.tolist().count(3) == 1 and 5 not in pieces.word_of_piece


def test_a_sentence_longer_than_the_model_reads_is_refused_not_truncated():
    tokenizer = _bert_tokenizer()
    sentences = [["short"], ["word"] * 20]
    with pytest.raises(DataError, match=r"^src\.txt:2: source: 22 subword tokens .* maximum "
                       r"of 16"):
        tokenize_words(tokenizer, sentences, max_length=16, path="src.txt", side="source")
    assert len(tokenize_words(tokenizer, sentences, max_length=22)[1].input_ids) == 22


# --- the aligner against the plain per-pair pipeline ---------------------------------------------

TOY = ParallelCorpus.of([
    ("the cat sat on the mat".split(), "a cat was sitting on the rug".split()),
    ("unbelievably good results".split(), "really good outcomes".split()),
    ("hello".split(), "hello world !".split()),
    ([], "nothing to align".split()),
    ("state-of-the-art models , again".split(), "the newest models".split()),
])


@pytest.fixture(scope="module")
def tiny_tower(tiny_model_dir):
    from contralign.encoders.loading import load_tower

    return load_tower(str(tiny_model_dir))


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("level", ["subword", "word"])
def test_batched_aligner_equals_the_plain_per_pair_pipeline(tiny_tower, level, center):
    naive = {"argmax": naive_argmax, "itermax": naive_itermax, "match": naive_match,
             "softmax": naive_softmax}
    settings = all_settings(naive, [0, 1, 2], [level], [center])
    grid = align_grid(tiny_tower, TOY, settings, batch_size=2)
    for setting in settings:
        for k in range(len(TOY)):
            expected = plain_align(tiny_tower.model, tiny_tower.tokenizer, TOY.source[k],
                                   TOY.target[k], setting.layer, naive[setting.method],
                                   level=level, center=center)
            assert grid[setting][k] == expected, (setting, k)


def test_batch_size_does_not_change_the_links(tiny_tower):
    setting = AlignSetting("argmax", 2, "subword", True)
    one = align_corpus(tiny_tower, TOY, setting, batch_size=1)
    assert align_corpus(tiny_tower, TOY, setting, batch_size=4) == one
    assert one[3] == set() and all(i < len(TOY.source[k]) and j < len(TOY.target[k])
                                   for k, links in enumerate(one) for i, j in links)


def test_aligning_runs_in_eval_mode_and_restores_the_mode(tiny_tower):
    setting = AlignSetting("itermax", 2)
    expected = align_corpus(tiny_tower, TOY, setting)
    tiny_tower.model.train()
    try:
        assert align_corpus(tiny_tower, TOY, setting) == expected  # no dropout
        assert tiny_tower.model.training
    finally:
        tiny_tower.model.eval()


def test_bad_settings_name_the_setting(tiny_tower):
    with pytest.raises(ConfigError, match=r"layer: layer 3 is out of range.*0 \(embeddings\) to 2"):
        align_corpus(tiny_tower, TOY, AlignSetting(layer=3))
    with pytest.raises(ConfigError, match="method: 'bogus'"):
        align_corpus(tiny_tower, TOY, AlignSetting("bogus", 1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="level: 'char'"):
        align_corpus(tiny_tower, TOY, AlignSetting(level="char"))  # type: ignore[arg-type]


def test_a_tower_without_a_transformer_is_refused():
    from contralign.alignment import num_layers

    with pytest.raises(ConfigError, match="needs a transformer text tower"):
        num_layers(object())


def test_the_default_layer_keeps_its_relative_depth(tiny_tower):
    assert default_layer(tiny_tower) == 1  # round(7 * 2 / 12)


# --- Pharaoh files -------------------------------------------------------------------------------


def test_read_bitext_splits_on_the_separator_and_whitespace(tmp_path):
    path = tmp_path / "pairs.src-tgt"
    path.write_bytes("\ufeffthe cat   ||| le chat  \r\n  ||| vide\nend |||\n".encode())
    corpus = read_bitext(path)
    assert corpus.source == [["the", "cat"], [], ["end"]]
    assert corpus.target == [["le", "chat"], ["vide"], []]
    assert corpus.source_path == corpus.target_path == str(path)


@pytest.mark.parametrize(("content", "expected"), [
    (b"a ||| b\nno separator\n", r"pairs.txt:2: expected 'source \|\|\| target', found no"),
    (b"a ||| b ||| c\n", r"pairs.txt:1: .*found 2 '\|\|\|' separators"),
    (b"a ||| b\n\nc ||| d\n", r"pairs.txt:2: .*found no"),
    (b"", r"pairs.txt: empty file"),
    (b"\n  \n", r"pairs.txt: empty file"),
    (b"ok ||| fine\nbad \xff ||| x\n", r"pairs.txt:2: not valid UTF-8: byte 0xff at column 5"),
])
def test_bad_bitext_lines_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "pairs.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        read_bitext(path)


def test_read_parallel_needs_line_parallel_files(tmp_path):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("a b\nc\n\n")  # the third line is an empty sentence
    tgt.write_text("x\ny z\nw\n")
    corpus = read_parallel(src, tgt)
    assert corpus.source == [["a", "b"], ["c"], []] and corpus.target == [["x"], ["y", "z"], ["w"]]
    tgt.write_text("x\ny z\nw\nextra\n")
    with pytest.raises(DataError, match=r"tgt.txt:4: 4 lines, but .*src.txt has only 3"):
        read_parallel(src, tgt)
    with pytest.raises(DataError, match=r"missing.txt: file not found"):
        read_parallel(src, tmp_path / "missing.txt")


def test_parse_links_reads_sure_and_possible_links_one_indexed():
    sure, possible = parse_links("1-2 3p4 2-2", "gold", 1, base=1)
    assert sure == {(0, 1), (1, 1)}
    assert possible == {(0, 1), (1, 1), (2, 3)}  # P ⊇ S
    assert parse_links("0-0 1-2", "out", 1, base=0)[0] == {(0, 0), (1, 2)}


@pytest.mark.parametrize(("text", "expected"), [
    ("1-2 3:4", r"gold.txt:7: link '3:4': expected i-j"),
    ("1-", r"link '1-'"),
    ("a-b", r"link 'a-b'"),
    ("1-2-3", r"link '1-2-3'"),
    ("-1-2", r"link '-1-2'"),
    ("0-1", r"link '0-1': index 0 in a 1-indexed file"),
    ("3-1", r"link '3-1': source word 3 is out of range: the source sentence has 2 words"),
    ("1p4", r"link '1p4': target word 4 is out of range: the target sentence has 3 words"),
])
def test_malformed_links_name_file_and_line(text, expected):
    with pytest.raises(DataError, match=expected):
        parse_links(text, "gold.txt", 7, base=1, sizes=(2, 3))


def test_read_links_checks_line_count_and_ranges_against_the_corpus(tmp_path):
    corpus = ParallelCorpus([["a", "b"], ["c"]], [["x"], ["y", "z"]], "pairs.txt", "pairs.txt")
    gold = tmp_path / "gold.txt"
    gold.write_text("1-1 2p1\n1-2\n")
    links = read_links(gold, corpus=corpus)
    assert links.sure == [{(0, 0)}, {(0, 1)}] and links.possible[0] == {(0, 0), (1, 0)}
    gold.write_text("1-1\n")
    with pytest.raises(DataError, match=r"gold.txt: 1 lines, but pairs.txt has 2 sentence"):
        read_links(gold, corpus=corpus)
    gold.write_text("1-1\n2-1\n")
    with pytest.raises(DataError, match=r"gold.txt:2: link '2-1': source word 2 is out of"):
        read_links(gold, corpus=corpus)


def test_written_links_are_zero_indexed_sorted_and_read_back(tmp_path):
    alignments = [{(1, 0), (0, 2), (0, 1)}, set(), {(3, 3)}]
    assert format_links(alignments[0]) == "0-1 0-2 1-0"
    path = tmp_path / "out.txt"
    assert write_links(path, alignments) == 3
    assert path.read_text() == "0-1 0-2 1-0\n\n3-3\n"
    assert read_links(path, base=0).sure == alignments


# --- metrics -------------------------------------------------------------------------------------


def test_scores_against_hand_computed_values():
    gold = GoldAlignment(sure=[{(0, 0)}], possible=[{(0, 0), (1, 1)}])
    s = alignment_scores([{(0, 0), (1, 1), (2, 2)}], gold)
    # |A| = 3, |S| = 1, |A ∩ S| = 1, |A ∩ P| = 2
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(1.0)
    assert s.f1 == pytest.approx(0.8)
    assert s.aer == pytest.approx(1 - (1 + 2) / (3 + 1))


def test_scores_are_summed_over_the_corpus_not_averaged():
    gold = GoldAlignment(sure=[{(0, 0), (1, 1)}, {(0, 0)}],
                         possible=[{(0, 0), (1, 1), (0, 1)}, {(0, 0), (1, 0)}])
    predicted = [{(0, 0), (0, 1), (2, 2)}, {(1, 0)}]
    s = alignment_scores(predicted, gold)
    # |A| = 4, |S| = 3, |A ∩ S| = 1 + 0, |A ∩ P| = 2 + 1
    assert (s.predicted, s.sure, s.hits_sure, s.hits_possible) == (4, 3, 1, 3)
    assert s.precision == pytest.approx(3 / 4)
    assert s.recall == pytest.approx(1 / 3)
    assert s.aer == pytest.approx(1 - (1 + 3) / (4 + 3))


def test_with_sure_links_only_aer_is_one_minus_f1():
    gold = GoldAlignment(sure=[{(0, 0), (1, 2), (2, 1)}], possible=[{(0, 0), (1, 2), (2, 1)}])
    s = alignment_scores([{(0, 0), (1, 1)}], gold)
    assert s.aer == pytest.approx(1 - s.f1)
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(1 / 3)


def test_perfect_and_empty_predictions():
    gold = GoldAlignment(sure=[{(0, 0)}], possible=[{(0, 0), (0, 1)}])
    assert alignment_scores([{(0, 0)}], gold).aer == 0.0
    assert alignment_scores([{(0, 0), (0, 1)}], gold).aer == 0.0  # possible links cost nothing
    empty = alignment_scores([set()], gold)
    assert (empty.precision, empty.recall, empty.f1, empty.aer) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="2 predicted sentence pairs, 1 gold"):
        alignment_scores([set(), set()], gold)


# --- real data -----------------------------------------------------------------------------------


def _real_set(shared_data: Path, name: str):
    folder = shared_data / "word_alignment"
    corpus = read_bitext(folder / f"{name}.src-tgt")
    return corpus, read_links(folder / f"{name}.gold", corpus=corpus)


def test_real_gold_files_are_read_one_indexed_with_sure_and_possible_links(shared_data):
    corpus, gold = _real_set(shared_data, "enfr")
    assert len(corpus) == len(gold) == 447
    assert sum(map(len, gold.sure)) == 4038 and sum(map(len, gold.possible)) == 17438
    assert gold.sure[2] == {(0, 0), (1, 1), (2, 2), (3, 3)}  # "oh , oh !" both sides
    corpus, gold = _real_set(shared_data, "roen")
    assert len(corpus) == 248 and gold.sure == gold.possible  # ro-en: sure links only
    assert gold.sure[0] == {(0, 2), (1, 3)}  # ajunge ! ||| that 's enough !


def test_real_pairs_align_like_the_plain_pipeline(shared_data):
    """The English model on the first en-fr pairs: the batched aligner gives the plain
    per-pair pipeline's links, and an AER far better than chance."""
    from contralign.encoders.loading import load_tower

    corpus, gold = _real_set(shared_data, "enfr")
    n = 24
    corpus = ParallelCorpus(corpus.source[:n], corpus.target[:n])
    gold = GoldAlignment(gold.sure[:n], gold.possible[:n])
    tower = load_tower("all-MiniLM-L6-v2")
    setting = AlignSetting(layer=default_layer(tower))
    links = align_corpus(tower, corpus, setting, batch_size=8)
    for k in range(0, n, 6):
        assert links[k] == plain_align(tower.model, tower.tokenizer, corpus.source[k],
                                       corpus.target[k], setting.layer, naive_argmax,
                                       center=True)
    assert alignment_scores(links, gold).aer < 0.5


@pytest.mark.slow
def test_multilingual_tower_meets_the_aer_targets_with_the_defaults(shared_data):
    """The issue's targets with the default setting (argmax, layer 7, subword, centered):
    measured 0.066 (en-fr) and 0.290 (ro-en)."""
    from contralign.encoders.loading import load_tower

    tower = load_tower("multilingual-e5-small")
    for name, target in (("enfr", 0.07), ("roen", 0.30)):
        corpus, gold = _real_set(shared_data, name)
        assert alignment_scores(align_corpus(tower, corpus), gold).aer <= target, name
