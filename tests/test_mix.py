"""Data mixing to target proportions, and the annealing set."""

import json
import random
from pathlib import Path

import pytest

from pasture.data.mix import LLAMA3_PROPORTIONS, MixError, write_mix
from pasture.documents import Document, iter_documents, write_documents

COUNTS = {"general": 300, "math": 120, "code": 150, "multilingual": 80}


@pytest.fixture()
def tagged(tmp_path: Path) -> Path:
    rng = random.Random(0)
    docs = []
    for domain, n in COUNTS.items():
        for i in range(n):
            text = f"{domain} document {i} " + "x" * rng.randint(200, 2000)
            docs.append(Document(f"{domain}-{i}", text, meta={"domain": domain, "quality_score": round(rng.random(), 4)}))
    rng.shuffle(docs)
    write_documents(tmp_path / "tagged" / "a.jsonl", docs[:300])
    write_documents(tmp_path / "tagged" / "b.jsonl.zst", docs[300:])
    return tmp_path / "tagged"


def test_llama3_proportions_are_met_and_deterministic(tagged: Path, tmp_path: Path):
    stats = write_mix(tagged, tmp_path / "mix", LLAMA3_PROPORTIONS, seed=7)
    for domain, target in LLAMA3_PROPORTIONS.items():
        assert stats["domains"][domain]["target_proportion"] == pytest.approx(target)
        assert stats["domains"][domain]["achieved_proportion"] == pytest.approx(target, abs=0.005)
    # by default no document repeats: the scarcest domain for its share is used whole
    epochs = {d: s["epochs"] for d, s in stats["domains"].items()}
    assert max(epochs.values()) == 1.0 and min(epochs.values()) > 0
    written = list(iter_documents(tmp_path / "mix" / "mix.jsonl.zst"))
    assert len(written) == stats["documents_written"]
    assert sum(len(d.text.encode()) for d in written) == stats["total_written"]
    assert len({d.id for d in written}) == len(written)
    assert json.loads((tmp_path / "mix" / "mix_stats.json").read_text()) == stats

    again = write_mix(tagged, tmp_path / "again", LLAMA3_PROPORTIONS, seed=7)
    assert (tmp_path / "again" / "mix.jsonl.zst").read_bytes() == (tmp_path / "mix" / "mix.jsonl.zst").read_bytes()
    assert again["domains"] == stats["domains"]
    other = write_mix(tagged, tmp_path / "other", LLAMA3_PROPORTIONS, seed=8)
    assert [d.id for d in iter_documents(tmp_path / "other")] != [d.id for d in written]


def test_a_larger_total_upsamples_with_marked_copies(tagged: Path, tmp_path: Path):
    available = sum(s["available"] for s in write_mix(tagged, tmp_path / "m0", {"general": 1, "math": 1})["domains"].values())
    stats = write_mix(tagged, tmp_path / "m1", {"general": 0.5, "math": 0.5}, total=2 * available, seed=1)
    math = stats["domains"]["math"]
    assert math["achieved_proportion"] == pytest.approx(0.5, abs=0.005)
    assert math["epochs"] > 2  # math is the smaller domain: repeated to reach half the mix
    assert stats["domains"]["code"]["written"] == 0  # not in the proportions: left out
    copies = [d for d in iter_documents(tmp_path / "m1") if "#" in d.id]
    assert copies and all(d.meta["mix_copy"] >= 1 and d.id.endswith(f"#{d.meta['mix_copy']}") for d in copies)


def test_anneal_set_takes_the_top_quality_documents(tagged: Path, tmp_path: Path):
    stats = write_mix(tagged, tmp_path / "mix", {"general": 1}, anneal={"domains": ["code", "math"], "top_fraction": 0.2})
    anneal = list(iter_documents(tmp_path / "mix" / "anneal.jsonl.zst"))
    assert {d.meta["domain"] for d in anneal} == {"code", "math"}
    for domain in ("code", "math"):
        chosen = [d for d in anneal if d.meta["domain"] == domain]
        summary = stats["anneal"]["domains"][domain]
        assert summary["documents"] == len(chosen)
        assert summary["written"] == pytest.approx(0.2 * stats["domains"][domain]["available"], rel=0.05)
        rest = [d for d in iter_documents(tagged) if d.meta["domain"] == domain and d.id not in {c.id for c in chosen}]
        assert min(d.meta["quality_score"] for d in chosen) >= max(d.meta["quality_score"] for d in rest)


def test_bad_proportions_and_missing_domains(tagged: Path, tmp_path: Path):
    with pytest.raises(MixError, match=r"ask for science \(10%\)"):
        write_mix(tagged, tmp_path / "x", {"general": 0.9, "science": 0.1})
    stats = write_mix(tagged, tmp_path / "x", {"general": 0.9, "science": 0.1}, allow_missing=True)
    assert stats["missing_domains"] == ["science"]
    assert stats["domains"]["general"]["achieved_proportion"] == 1.0
    with pytest.raises(MixError, match="non-negative"):
        write_mix(tagged, tmp_path / "y", {"general": -1})
    with pytest.raises(MixError, match="unknown key"):
        write_mix(tagged, tmp_path / "z", {"general": 1}, anneal={"domain": ["code"]})
