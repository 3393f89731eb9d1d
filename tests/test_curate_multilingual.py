"""Text without spaces between words (Chinese, Japanese, Thai): kept by the heuristic rules as readily
as English, and its near-duplicates found by MinHash with the same recall as English."""

import random
from itertools import combinations

from icu4py.breakers import WordBreaker

from curate_corpus import write_jsonl
from multilingual_corpus import CORPORA, DOC_PAGES
from pasture.data.curate import run_curation
from pasture.documents import Document
from pasture.data.filters import HeuristicFilter
from pasture.data.filters.base import TextFeatures
from pasture.data.filters.language import identify_language
from pasture.data.minhash import words
from pasture.data.recipe import load_recipe
from pasture.data.segment import unspaced_language
from test_curate_dedup import lsh_quality


def corpus(language: str) -> list[str]:
    """The five whole documents and 25 more of two paragraphs each (every paragraph pair of docs i < j)."""
    docs = CORPORA[language]
    paragraphs = [p for d in docs for p in d.split("\n\n")]
    pairs = list(combinations(range(len(paragraphs)), 2))
    picked = random.Random(0).sample([(a, b) for a, b in pairs if a // 3 != b // 3], 25)
    return docs + [paragraphs[a] + "\n\n" + paragraphs[b] for a, b in picked]


def test_words_are_dictionary_words_in_every_script():
    assert TextFeatures("我们今天去北京大学参观了图书馆。").words == ["我们", "今天", "去", "北京", "大学", "参观", "了", "图书", "馆"]
    assert TextFeatures("インストールが成功したことを確認してください").words[:4] == ["インストール", "が", "成功", "した"]
    assert TextFeatures("ภาษาไทยไม่มีการเว้นวรรค").words == ["ภาษา", "ไทย", "ไม่มี", "การ", "เว้น", "วรรค"]
    assert TextFeatures("हिन्दी भाषा").words == ["हिन्दी", "भाषा"]  # vowel signs stay inside their word
    assert words("全角，句読点。Ｆｕｌｌ－ｗｉｄｔｈ") == ["全角", "句読点", "ｆｕｌｌ", "ｗｉｄｔｈ"]  # full-width punctuation splits
    # words per document, comparable across scripts (English: 101-121)
    for language in ("zh", "ja", "th"):
        assert all(100 <= len(TextFeatures(d).words) <= 190 for d in CORPORA[language]), language
        assert [unspaced_language(d) for d in CORPORA[language]] == [language] * 5
    assert [unspaced_language(d) for d in CORPORA["en"]] == [None] * 5


def test_ordinary_documents_in_every_script_are_kept_as_often_as_english():
    docs = {lang: corpus(lang) for lang in CORPORA}
    for tagged in (True, False):  # language ID at ingest (the web recipe), or no tag at all
        sample = [Document(f"{lang}{i}", text, meta={"language": identify_language(text)[0]} if tagged else {})
                  for lang, texts in docs.items() for i, text in enumerate(texts)]
        stage = HeuristicFilter()
        stage.fit(sample)
        assert sorted(stage.kl_models) == ["en", "ja", "th", "zh"]
        reasons = {lang: [stage.process(d) for d in sample if d.id.startswith(lang)] for lang in CORPORA}
        kept = {lang: r.count(None) for lang, r in reasons.items()}
        # the KL rule drops each language's 99th-percentile outlier, and nothing else goes
        assert kept == {"en": 29, "zh": 29, "ja": 29, "th": 29}, reasons
        assert {r for rs in reasons.values() for r in rs} == {None, "kl_outlier"}


def test_documentation_pages_are_judged_by_ngrams_as_long_as_english_ones():
    """The same page of set phrases in four languages: Japanese repeats its 5-word runs far more than English does
    (its words are particles and auxiliaries), so its n-gram rules look at 10-grams."""
    stage = HeuristicFilter(kl=False)
    unscaled = HeuristicFilter(kl=False, ngram_scale={})
    docs = {lang: Document(lang, page, meta={"language": lang}) for lang, page in DOC_PAGES.items()}
    assert [stage.process(d) for d in docs.values()] == [None] * 4
    assert unscaled.repetition_stats(docs["en"])["dup_5_gram"] < 0.15 < unscaled.repetition_stats(docs["ja"])["dup_5_gram"]
    assert unscaled.process(docs["ja"]) == "gopher_repetition:dup_5_gram"
    assert stage.ngram_limits("ja") == ({4: 0.2, 6: 0.18, 8: 0.16}, {10: 0.15, 12: 0.14, 14: 0.13, 16: 0.12, 18: 0.11, 20: 0.1})
    assert stage.ngram_limits("zh") == stage.ngram_limits("en") == (stage.top_ngram_max, stage.dup_ngram_max)
    words_per_english_word = {lang: len(TextFeatures(page).words) / len(TextFeatures(DOC_PAGES["en"]).words)
                              for lang, page in DOC_PAGES.items()}
    assert 1.4 < words_per_english_word["ja"] < 1.6 and 1.0 < words_per_english_word["th"] < 1.2
    assert 0.8 < words_per_english_word["zh"] < 1.0


def test_the_web_recipe_keeps_every_script_alike(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"id": f"{lang}{i}", "text": t} for lang in CORPORA for i, t in enumerate(corpus(lang))])
    # the shipped recipe as it is, but for line counting: the two-paragraph documents reuse paragraphs on purpose
    stats = run_curation(load_recipe("web", [f'input.paths=["{tmp_path / "d.jsonl"}"]', f'output.dir="{tmp_path / "out"}"',
                                             "engine.workers=1", "line_dedup.max_count=1000", "output.format=jsonl"]))
    assert stats["languages"] == {lang: {"docs": 30, "kept": 29} for lang in ("en", "ja", "th", "zh")}
    assert stats["stages"]["heuristic"]["removed"] == {"kl_outlier": 4}  # one per language, its 99th percentile
    assert stats["stages"]["output"]["docs_out"] == 116


def planted(language: str, copies: int = 8, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """The five documents and `copies` of each with 0, 0.5, ..., 3.5% of their words replaced by words of the
    other documents (word boundaries from ICU in every language); returns texts and (original, copy) pairs."""
    rng = random.Random(seed)
    base = CORPORA[language]
    spans = [[(a, b) for a, b in WordBreaker(t, language).segments() if t[a:b].strip() and t[a:b][0].isalnum()]
             for t in base]
    vocabulary = sorted({t[a:b] for t, s in zip(base, spans) for a, b in s})
    texts, pairs = list(base), []
    for i, (text, word_spans) in enumerate(zip(base, spans)):
        for k in range(copies):
            chosen = sorted(rng.sample(range(len(word_spans)), round(len(word_spans) * k * 0.005)), reverse=True)
            copy = text
            for j in chosen:
                a, b = word_spans[j]
                copy = copy[:a] + rng.choice(vocabulary) + copy[b:]
            pairs.append((i, len(texts)))
            texts.append(copy)
    return texts, pairs


def test_planted_near_duplicates_are_found_in_chinese_and_thai_as_in_english():
    found_planted, recall = {}, {}
    for language in ("en", "zh", "th", "ja"):
        texts, pairs = planted(language)
        jaccard, found = lsh_quality(texts)
        true = {p for p, j in jaccard.items() if j >= 0.8}
        assert len(true) >= 50, (language, len(true))
        recall[language] = len(true & found) / len(true)
        found_planted[language] = sum(p in found for p in pairs)
        assert sum(jaccard[p] < 0.5 for p in found) == 0, language  # no false cluster between different documents
    # 40 planted copies each: the ones with few edits are found, in every script alike
    assert found_planted["en"] >= 32
    for language in ("zh", "th", "ja"):
        assert abs(found_planted[language] - found_planted["en"]) <= 4, found_planted
        assert recall[language] >= 0.9 and abs(recall[language] - recall["en"]) <= 0.1, recall
