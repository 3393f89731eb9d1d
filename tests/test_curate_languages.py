"""De-duplication within each language (Llama 3 §3.1.1, multilingual data): MinHash and line counts per language."""

import shutil

from curate_corpus import recipe, stdlib_texts, write_jsonl

from pasture.data.curate import run_curation
from pasture.data.minhash import shingles
from pasture.documents import iter_documents

FRENCH = [
    "Le petit village se trouve au pied de la montagne, entouré de champs de blé et de vignes. Chaque matin, les "
    "habitants se retrouvent sur la place du marché pour acheter du pain frais, du fromage et des légumes cultivés "
    "dans les jardins voisins. En été, les touristes viennent nombreux pour profiter du calme et de la beauté des "
    "paysages.",
    "La recette traditionnelle de la soupe à l'oignon demande de la patience. Il faut faire revenir lentement les "
    "oignons dans le beurre jusqu'à ce qu'ils deviennent dorés, puis ajouter le bouillon et laisser mijoter pendant "
    "une heure. On sert la soupe bien chaude avec une tranche de pain grillé et du fromage fondu.",
    "Le conseil municipal a décidé de rénover la bibliothèque de la ville l'année prochaine. Les travaux dureront "
    "environ six mois et permettront d'agrandir la salle de lecture, d'installer de nouveaux ordinateurs et de créer "
    "un espace réservé aux enfants. Pendant cette période, les livres pourront être empruntés à la mairie.",
    "Les chercheurs de l'université ont étudié le comportement des abeilles pendant trois ans. Ils ont observé que "
    "les colonies situées près des forêts produisent davantage de miel que celles installées en ville. Selon eux, la "
    "diversité des fleurs joue un rôle essentiel dans la santé des ruches.",
    "Mon grand-père racontait souvent des histoires de sa jeunesse passée à la campagne. Il se levait avant le "
    "soleil pour s'occuper des vaches, puis il marchait plusieurs kilomètres pour aller à l'école. Le soir, toute la "
    "famille se réunissait autour de la cheminée pour écouter la radio.",
]
GERMAN = [
    "Die kleine Stadt liegt an einem ruhigen Fluss und ist von dichten Wäldern umgeben. Jeden Samstag findet auf dem "
    "Marktplatz ein Wochenmarkt statt, auf dem die Bauern aus der Umgebung Obst, Gemüse und frisches Brot verkaufen. "
    "Im Herbst kommen viele Wanderer, um die bunten Blätter zu bewundern.",
    "Für einen guten Apfelkuchen braucht man vor allem säuerliche Äpfel, Butter, Zucker und etwas Zimt. Der Teig "
    "sollte eine Stunde im Kühlschrank ruhen, bevor man ihn ausrollt. Nach vierzig Minuten im Ofen ist der Kuchen "
    "goldbraun und duftet herrlich durch die ganze Wohnung.",
    "Die Forscher haben untersucht, wie sich das Wetter in den Alpen in den letzten fünfzig Jahren verändert hat. Sie "
    "stellten fest, dass die Gletscher deutlich kleiner geworden sind und der Schnee im Frühling früher schmilzt. "
    "Diese Entwicklung hat große Folgen für die Landwirtschaft und den Tourismus.",
]
ENGLISH_VILLAGE = (
    "The small village lies at the foot of the mountain, surrounded by fields of wheat and vineyards. Every morning "
    "the people meet in the market square to buy fresh bread, cheese and vegetables grown in the gardens nearby. In "
    "summer many tourists come to enjoy the calm and the beauty of the landscape.")


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a, 5), shingles(b, 5)
    return len(sa & sb) / len(sa | sb)


def test_minhash_clusters_near_duplicates_only_within_a_language(tmp_path):
    english = stdlib_texts(4, chars=1500)
    code = stdlib_texts(5, chars=6000)[4]
    # one code listing under an English and a French introduction (repeated, as on a tabbed page): the
    # word shingles barely differ, the language does
    en_listing, fr_listing = (f"{(intro + ' ') * 12}\n{code}" for intro in (ENGLISH_VILLAGE, FRENCH[0]))
    assert jaccard(en_listing, fr_listing) > 0.8
    docs = {"en_listing": en_listing, "fr_listing": fr_listing,
            "fr_soup": FRENCH[1] + "\n" + FRENCH[2], "fr_soup_copy": FRENCH[1] + "\n" + FRENCH[2] + " Merci.",
            "de_town": GERMAN[0] + "\n" + GERMAN[1], "de_town_copy": GERMAN[0] + "\n" + GERMAN[1] + " Danke.",
            "en_a": english[0], "en_a_copy": english[0] + "\nThanks for reading.", "en_b": english[1],
            "fr_bees": FRENCH[3], "de_alps": GERMAN[2]}
    write_jsonl(tmp_path / "d.jsonl", [{"id": k, "text": t} for k, t in docs.items()])
    removed = {}
    for per_language in (True, False):
        out = tmp_path / f"out-{per_language}"
        stats = run_curation(recipe([str(tmp_path / "d.jsonl")], out, line_dedup={"enabled": False},
                                    minhash={"per_language": per_language}))
        removed[per_language] = {d.id for d in iter_documents(out / "rejects" / "minhash")}
        if per_language:
            assert stats["languages"] == {"en": {"docs": 4, "kept": 3}, "fr": {"docs": 4, "kept": 3},
                                          "de": {"docs": 3, "kept": 2}}
            assert {d.id: d.meta["language"] for d in iter_documents(out / "data")} == {
                "en_listing": "en", "fr_listing": "fr", "fr_soup": "fr", "de_town": "de", "en_a": "en", "en_b": "en",
                "fr_bees": "fr", "de_alps": "de"}
        else:
            assert "languages" not in stats
    assert removed[True] == {"fr_soup_copy", "de_town_copy", "en_a_copy"}
    assert removed[False] == {"fr_soup_copy", "de_town_copy", "en_a_copy", "fr_listing"}


def test_line_dedup_counts_a_line_within_its_language(tmp_path):
    footer = "Facebook | Twitter | Instagram | YouTube"
    english = [f"{t}\n{footer}" for t in stdlib_texts(7, chars=600)]  # 7 times in English: more than 6
    french = [f"{t}\n{footer}" for t in FRENCH[:4]] + [FRENCH[4]]  # 4 times in French
    german = [f"{t}\n{footer}" for t in GERMAN[:2]]  # 2 times in German
    records = [{"id": f"{lang}{i}", "text": t} for lang, texts in (("en", english), ("fr", french), ("de", german))
               for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "d.jsonl", records)
    for per_language, lines_removed, footers_kept in ((True, 7, {"fr": 4, "de": 2}), (False, 13, {})):
        out = tmp_path / f"out-{per_language}"
        stats = run_curation(recipe([str(tmp_path / "d.jsonl")], out, minhash={"enabled": False},
                                    line_dedup={"per_language": per_language}))
        assert stats["stages"]["line_dedup"]["lines_removed"] == lines_removed
        assert stats["stages"]["line_dedup"]["frequent_lines"] == 1
        kept = {d.id: d.text for d in iter_documents(out / "data")}
        assert len(kept) == 14
        with_footer = {}
        for doc_id, text in kept.items():
            if footer in text:
                with_footer[doc_id[:2]] = with_footer.get(doc_id[:2], 0) + 1
        assert with_footer == footers_kept


def test_line_buckets_count_documents_of_one_language(tmp_path):
    """Buckets of bucket_docs=10 documents per language: a minority language's footer is counted in its own
    bucket, not spread over buckets sized by every language; first ordinals carry across shards, and a
    document removed by MinHash is not counted."""
    footer = "Suivez-nous sur Facebook et Twitter pour ne rien manquer de nos articles."  # all 7 French docs
    share = "Share this article with your friends and colleagues."  # English docs 7 and 9-15
    english = stdlib_texts(17, chars=600)
    texts = {f"en{i}": english[i] + (f"\n{share}" if i == 7 or 9 <= i <= 15 else "") for i in range(17)}
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (1, 3)]
    texts.update({f"fr{i}": f"{FRENCH[a]}\n{FRENCH[b]}\n{footer}" for i, (a, b) in enumerate(pairs)})
    texts["en2_copy"] = texts["en2"]
    shards = [["en0", "en1", "fr0", "en2", "en2_copy", "en3", "fr1", "en4", "en5", "fr2", "en6", "en7"],
              [*(f"en{i}" for i in range(8, 17)), "fr3", "fr4", "fr5", "fr6"]]
    for n, ids in enumerate(shards):
        write_jsonl(tmp_path / f"s{n}.jsonl", [{"id": i, "text": texts[i]} for i in ids])
    inputs = [str(tmp_path / f"s{n}.jsonl") for n in range(2)]
    # Per language: en-b0 = en0-en9 (share 2x), en-b1 = en10-en16 (share 6x), fr-b0 = fr0-fr6 (footer 7x: removed).
    # Counting all languages together (en2_copy, removed by MinHash, not counted), bucket 1 holds en7-en16, so
    # share is seen 8 times there and removed, and the footer is split 3 + 4 and kept: 8 lines removed, as
    # per_language=true also removed before its buckets were per language. Counting en2_copy would give 14.
    for per_language, removed, frequent, footers, shares in ((True, 7, 1, 0, 8), (False, 8, 1, 7, 0)):
        out = tmp_path / f"out-{per_language}"
        stats = run_curation(recipe(inputs, out, url_dedup={"enabled": False},
                                    line_dedup={"bucket_docs": 10, "per_language": per_language}))
        assert stats["stages"]["minhash"]["removed"] == {"near_duplicate": 1}
        line_stats = stats["stages"]["line_dedup"]
        assert (line_stats["lines_removed"], line_stats["frequent_lines"]) == (removed, frequent)
        assert line_stats["buckets"] == 3  # en-b0, en-b1, fr-b0 / b0-b2 of 24 documents
        kept = {d.id: d for d in iter_documents(out / "data")}
        assert len(kept) == 24 and "en2_copy" not in kept
        assert sum(footer in d.text for d in kept.values()) == footers
        assert sum(share in d.text for d in kept.values()) == shares
        if per_language:
            assert all(d.meta["language"] == i[:2] for i, d in kept.items())
            shutil.rmtree(out / "_work" / "done" / "filter")  # resume: the filter pass finds the same buckets
            again = run_curation(recipe(inputs, out, url_dedup={"enabled": False},
                                        line_dedup={"bucket_docs": 10, "per_language": per_language}))
            assert again["stages"]["line_dedup"] == line_stats | {"seconds": again["stages"]["line_dedup"]["seconds"]}
            assert sorted(p.name for p in (out / "_work" / "lines" / "frequent").iterdir()) == [
                "en-b00000-r000.npy", "en-b00001-r000.npy", "fr-b00000-r000.npy"]
