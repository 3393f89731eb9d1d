"""Language id (offline lid.176.ftz), PII masking, domain block lists, domain tags."""

import pickle
from pathlib import Path

import pytest

from pasture.data.filters import DomainTagger, FilterError, LanguageFilter, SafetyFilter
from pasture.data.filters.language import bundled_model_path
from pasture.data.filters.safety import mask_pii
from pasture.documents import Document

SENTENCES = {
    "en": "The weather was cold this morning, so we stayed at home and read books by the fire.",
    "fr": "Il faisait froid ce matin, alors nous sommes restés à la maison pour lire des livres près du feu.",
    "de": "Heute Morgen war es kalt, deshalb sind wir zu Hause geblieben und haben am Feuer Bücher gelesen.",
    "es": "Esta mañana hacía frío, así que nos quedamos en casa leyendo libros junto al fuego.",
    "zh": "今天早上很冷，所以我们待在家里，在火炉旁看书。",
    "ru": "Сегодня утром было холодно, поэтому мы остались дома и читали книги у камина.",
    "ar": "كان الجو باردا هذا الصباح، لذلك بقينا في المنزل وقرأنا الكتب بجانب المدفأة.",
}


def test_bundled_model_is_the_small_176_language_model_inside_the_wheel():
    path = bundled_model_path()
    assert path.name == "lid.176.ftz" and "site-packages" in str(path)
    assert 900_000 < path.stat().st_size < 1_000_000


def test_language_tags_for_seven_languages():
    stage = LanguageFilter(min_score=0.5)
    for language, text in SENTENCES.items():
        doc = Document(language, text)
        assert stage.process(doc) is None
        assert doc.meta["language"] == language
        assert doc.meta["language_score"] >= 0.5


def test_allowed_languages_and_score_threshold():
    english_only = LanguageFilter(allowed=["en"], min_score=0.5)
    assert english_only.process(Document("en", SENTENCES["en"])) is None
    french = Document("fr", SENTENCES["fr"])
    assert english_only.process(french) == "language"
    assert french.meta["language"] == "fr"  # tagged even when dropped
    assert LanguageFilter(min_score=1.0).process(Document("en", "ok")) == "language_score"
    clone = pickle.loads(pickle.dumps(english_only))
    assert clone.process(Document("de", SENTENCES["de"])) == "language"
    with pytest.raises(FilterError, match="does not exist"):
        LanguageFilter(model="/nonexistent/lid.bin")


def test_language_tag_from_ingest_is_reused_not_recomputed():
    doc = Document("x", "Ceci est un texte en français, assez long pour être reconnu sans hésitation.",
                   meta={"language": "fr", "language_score": 0.97})
    assert LanguageFilter(allowed=["en"]).process(doc) == "language"
    assert doc.meta == {"language": "fr", "language_score": 0.97}
    untagged = Document("y", doc.text)
    assert LanguageFilter().process(untagged) is None and untagged.meta["language"] == "fr"


def test_pii_masking_exact_output():
    text = (
        "Write to jane.doe+news@mail.example.co.uk or call +1 (555) 123-4567 or 020 7946 0958.\n"
        "Server 93.184.216.34 and 2606:4700:4700::1111 answered; 192.168.0.1, ::1 and 2001:db8::1 are not public.\n"
        "Version 1.2.3, date 2024-01-15, time 12:30:45, std::vector and 1,000,000 stay."
    )
    masked, counts = mask_pii(text)
    assert masked == (
        "Write to <EMAIL> or call <PHONE> or <PHONE>.\n"
        "Server <IP> and <IP> answered; 192.168.0.1, ::1 and 2001:db8::1 are not public.\n"
        "Version 1.2.3, date 2024-01-15, time 12:30:45, std::vector and 1,000,000 stay."
    )
    assert counts == {"email": 1, "ip": 2, "phone": 2}
    assert mask_pii("nothing here") == ("nothing here", {})
    assert mask_pii("a@b.org 8.8.8.8", kinds=["ip"]) == ("a@b.org <IP>", {"ip": 1})


def test_safety_stage_masks_and_counts_in_meta():
    doc = Document("d", "Contact admin@example.org from 8.8.4.4.", url="https://example.org/contact")
    assert SafetyFilter().process(doc) is None
    assert doc.text == "Contact <EMAIL> from <IP>."
    assert doc.meta["pii"] == {"email": 1, "ip": 1}
    untouched = Document("d", "admin@example.org", url="https://example.org")
    assert SafetyFilter(mask_pii=False).process(untouched) is None and untouched.text == "admin@example.org"


def test_blocked_domains_match_subdomains_but_not_lookalikes(tmp_path: Path):
    stage = SafetyFilter()
    for url in ["https://pornhub.com/video", "http://www.pornhub.com", "https://de.cdn.xvideos.com/a?b=c", "PORNHUB.COM/x", "https://user:pw@xnxx.com:8080/"]:
        assert stage.process(Document("d", "text", url=url)) == "blocked_domain", url
    for url in ["https://notpornhub.com", "https://pornhub.com.example.org/", "https://en.wikipedia.org/wiki/Pornhub", None, "not a url"]:
        assert stage.process(Document("d", "text", url=url)) is None, url
    assert stage.blocked_domain("https://a.b.xhamster.com/") == "xhamster.com"
    extra = tmp_path / "block.txt"
    extra.write_text("# comment\nBadSite.example\n")
    custom = SafetyFilter(blocklists=[str(extra)], default_blocklist=False)
    assert custom.process(Document("d", "t", url="https://www.badsite.example/")) == "blocked_domain"
    assert custom.process(Document("d", "t", url="https://pornhub.com/")) is None
    with pytest.raises(FilterError, match="does not exist"):
        SafetyFilter(blocklists=[str(tmp_path / "missing.txt")])
    with pytest.raises(FilterError, match="unknown kind"):
        SafetyFilter(pii=["ssn"])


CODE = '''import os

def read_config(path):
    with open(path) as f:
        data = f.read()
    if not data:
        return {}
    return parse(data)
'''
JS = "function add(a, b) {\n  const total = a + b;\n  console.log(total);\n  return total;\n}\n"
MATH = (
    r"Let $f(x) = x^2 + 3x + 2$. To solve the equation $f(x) = 0$ we factor the polynomial: "
    r"$(x+1)(x+2) = 0$, so $x = -1$ or $x = -2$. Theorem. For every integer $n \geq 1$, "
    r"$\sum_{k=1}^{n} k = \frac{n(n+1)}{2}$. Proof: by induction on n."
)
PROSE = "The history of the city goes back to the Roman period, when a small fort was built on the hill (see the map). It has 3 bridges."


def test_domain_tags_code_math_prose_and_multilingual():
    tagger = DomainTagger()
    tags = {}
    for name, text in {"code": CODE, "js": JS, "math": MATH, "prose": PROSE, "french": SENTENCES["fr"], "chinese": SENTENCES["zh"]}.items():
        doc = Document(name, text)
        assert tagger.process(doc) is None
        tags[name] = doc.meta["domain"]
    assert tags == {"code": "code", "js": "code", "math": "math", "prose": "general", "french": "multilingual", "chinese": "multilingual"}
    scored = Document("c", CODE)
    tagger.process(scored)
    # 6 of 7 lines look like code ("data = f.read()" does not); one equation-like "x = y" in 21 words
    assert scored.meta["domain_scores"] == {"code": round(6 / 7, 4), "math": round(1 / 21, 4)}
    # an existing language tag is used as is
    tagged = Document("p", PROSE, meta={"language": "de"})
    tagger.process(tagged)
    assert tagged.meta["domain"] == "multilingual"
    no_lid = DomainTagger(identify_language=False)
    untagged = Document("f", SENTENCES["fr"])
    no_lid.process(untagged)
    assert untagged.meta["domain"] == "general" and "language" not in untagged.meta
    assert pickle.loads(pickle.dumps(tagger)).domain(Document("m", MATH)) == "math"
