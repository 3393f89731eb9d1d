"""De-duplication within each language (Llama 3 §3.1.1, multilingual data): MinHash and line counts per language."""

from curate_corpus import recipe, stdlib_texts, write_jsonl
from pasture.data.curate import run_curation
from pasture.data.documents import iter_documents
from pasture.data.minhash import shingles

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
