"""Heuristic filters: Gopher repetition/quality rules, dirty words, KL outliers."""

import pickle
import random

import pytest

from pasture.data.filters import STAGES, FilterError, HeuristicFilter
from pasture.data.filters.base import TextFeatures
from pasture.documents import Document

PROSE = (
    "The history of the city goes back to the Roman period, when a small fort was built on the hill above the river. "
    "Over the following centuries the settlement grew into a market town, and by the twelfth century it had a cathedral, "
    "a castle and a charter of its own. Today it is known for its university, which was founded in 1410 and has educated "
    "many scientists, writers and politicians. Visitors come to see the old bridge, the narrow streets of the medieval "
    "quarter and the museum of local history that stands near the main square."
)

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"]
# every line unique (so line dedup would keep them all), but the same words again and again
LOG = "\n".join(
    f"warning the request to the billing service failed for user {name} because the upstream server did not respond in time"
    for name in NAMES
)


def test_registry_names_the_five_stages():
    assert sorted(STAGES) == ["domains", "heuristic", "language", "quality", "safety"]
    assert all(cls.name == key for key, cls in STAGES.items())


def test_repetition_fractions_on_a_known_input():
    stats = HeuristicFilter(kl=False).repetition_stats(Document("x", "a b c d a b c d a b c d e f\na b\na b"))
    # 18 one-character words; "a b" occurs 5 times -> 10/18; "a b c d" 3 times -> 12/18
    assert stats["top_2_gram"] == pytest.approx(10 / 18)
    assert stats["top_3_gram"] == pytest.approx(9 / 18)
    assert stats["top_4_gram"] == pytest.approx(12 / 18)
    # 5-grams starting at words 0..7 repeat: they cover words 0..11
    assert stats["dup_5_gram"] == pytest.approx(12 / 18)
    assert stats["dup_10_gram"] == 0.0
    # lines: "a b" repeats once out of 3 lines; 3 of the 35 characters are in the repeat
    assert stats["dup_line_frac"] == pytest.approx(1 / 3)
    assert stats["dup_line_chars"] == pytest.approx(3 / 35)
    assert stats["dup_para_frac"] == 0.0


def test_log_like_document_is_dropped_for_repeated_ngrams_and_prose_is_kept():
    h = HeuristicFilter(kl=False)
    stats = h.repetition_stats(Document("log", LOG))
    assert stats["dup_line_frac"] == 0.0
    # the 12 lines share all their words but the user name, so almost every 5-gram repeats
    assert stats["top_2_gram"] == pytest.approx(0.145, abs=1e-3)
    assert stats["top_3_gram"] == pytest.approx(0.207, abs=1e-3)  # > 0.18
    assert stats["dup_5_gram"] == pytest.approx(0.952, abs=1e-3)
    assert h.process(Document("log", LOG)) == "gopher_repetition:top_3_gram"
    assert h.process(Document("prose", PROSE)) is None
    assert h.repetition_stats(Document("prose", PROSE))["dup_5_gram"] == 0.0


def test_duplicate_paragraphs_and_lines():
    para = "This is one of the paragraphs of the page, and it has the words it needs to pass."
    doc = Document("p", "\n\n".join([para, para, para, PROSE]))
    assert HeuristicFilter(kl=False).process(doc) == "gopher_repetition:dup_para_frac"
    only_lines = HeuristicFilter(kl=False, max_dup_para_frac=None, max_dup_para_chars=None)
    assert only_lines.process(doc) == "gopher_repetition:dup_line_frac"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("too short to be a page", "too_few_words"),
        (PROSE + "".join(f" #tag{i}" for i in range(15)), "hash_ratio"),
        (PROSE + " and then..." * 15, "ellipsis_ratio"),
        ("\n".join("- item number " + w for w in PROSE.split()[:60]), "bullet_lines"),
        (PROSE + " " + " ".join(str(i) for i in range(40)), "alpha_words"),
        (" ".join(w for w in PROSE.split() if w not in {"the", "to", "of", "and", "with", "that"}), "stop_words"),
    ],
)
def test_gopher_quality_rules(text, reason):
    assert HeuristicFilter(kl=False).process(Document("d", text)) == reason


def test_stop_words_follow_the_document_language():
    german = "Die Geschichte der Stadt reicht bis in die Römerzeit zurück, und das ist gut so. " * 6
    h = HeuristicFilter(kl=False, max_dup_line_chars=None, top_ngram_max={}, dup_ngram_max={}, max_dup_para_frac=None)
    assert h.process(Document("de", german, meta={"language": "de"})) is None
    assert h.process(Document("de", german, meta={"language": "en"})) == "stop_words"
    assert h.process(Document("ko", german, meta={"language": "ko"})) is None  # no list: rule skipped


def test_dirty_words_are_counted_against_a_threshold():
    h = HeuristicFilter(kl=False)
    two = Document("a", PROSE + " It was a porn site selling xxx videos.")
    three = Document("b", PROSE + " It was a porn site selling xxx videos about anal sex.")
    assert h.count_dirty_words(TextFeatures.of(two)) == 2
    assert h.count_dirty_words(TextFeatures.of(three)) == 3  # the phrase "anal sex" counts once
    assert h.process(two) is None
    assert h.process(three) == "dirty_words"
    assert HeuristicFilter(kl=False, max_dirty_words=0).process(two) == "dirty_words"
    french = Document("c", PROSE + " salope pute")
    assert HeuristicFilter(kl=False, max_dirty_words=1, dirty_word_languages=["fr"]).process(french) == "dirty_words"
    assert HeuristicFilter(kl=False, max_dirty_words=1, dirty_word_languages=["en"]).process(french) is None
    with pytest.raises(FilterError, match="no dirty-word list for xx"):
        HeuristicFilter(dirty_word_languages=["xx"])


def _corpus(n_normal=200, n_outliers=6, seed=0):
    rng = random.Random(seed)
    vocab = PROSE.lower().replace(",", "").replace(".", "").split()
    normal = [Document(f"n{i}", " ".join(rng.choice(vocab) for _ in range(rng.randint(80, 160)))) for i in range(n_normal)]
    # outliers: mostly tokens the corpus never uses (hashes, ids), a few ordinary words
    outliers = [
        Document(f"o{i}", " ".join(rng.choice(vocab) if j % 5 == 0 else f"{rng.getrandbits(40):x}" for j in range(100)))
        for i in range(n_outliers)
    ]
    return normal, outliers


def test_kl_outliers_are_dropped_after_fitting_the_corpus_distribution():
    normal, outliers = _corpus()
    h = HeuristicFilter(min_words=None, min_stop_words=None, min_alpha_words=None, top_ngram_max={}, dup_ngram_max={}, kl_percentile=95)
    with pytest.raises(FilterError, match="needs fit"):
        h.process(normal[0])
    h.fit(normal + outliers)
    kl_normal = [h.kl_divergence(TextFeatures.of(d).lower_words) for d in normal]
    kl_outlier = [h.kl_divergence(TextFeatures.of(d).lower_words) for d in outliers]
    assert max(kl_normal) < 1.0 < 3.0 < min(kl_outlier)
    assert [h.process(d) for d in outliers] == ["kl_outlier"] * 6
    dropped_normal = sum(h.process(d) == "kl_outlier" for d in normal)
    assert dropped_normal <= 5  # the 95th percentile of 206 documents, 6 of them outliers
    # the fitted stage survives pickling (the engine ships it to worker processes)
    clone = pickle.loads(pickle.dumps(h))
    assert [clone.process(d) for d in normal + outliers] == [h.process(d) for d in normal + outliers]


def test_text_features_are_shared_until_the_text_changes():
    doc = Document("d", PROSE)
    first = TextFeatures.of(doc)
    assert TextFeatures.of(doc) is first
    assert first.words[:3] == ["The", "history", "of"]
    doc.text = "你好世界 hello world"
    assert TextFeatures.of(doc).words == ["你好", "世界", "hello", "world"]  # dictionary words, not characters


def test_bad_ngram_thresholds_are_rejected():
    with pytest.raises(FilterError, match="top_ngram_max"):
        HeuristicFilter(top_ngram_max=[0.2])
    assert HeuristicFilter(top_ngram_max={"2": 0.3}).top_ngram_max == {2: 0.3}
