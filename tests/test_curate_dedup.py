"""The de-duplication stages, with numbers: URL (keep newest), MinHash (vs exact Jaccard), lines (> 6 per bucket)."""

import random
from itertools import combinations

import numpy as np
from curate_corpus import page, recipe, stdlib_texts, write_jsonl, write_warc
from pasture.data.curate import run_curation
from pasture.documents import iter_documents
from pasture.data.minhash import MinHasher, bucket_pairs, connected_roots, shingles
from pasture.data.phases.shards import describe_key, doc_key
from pasture.data.urls import crawl_time, normalize_url, url_key
from pasture.documents import iter_documents


def test_url_normalisation_and_crawl_times():
    assert normalize_url("HTTP://WWW.Example.COM:80/a//b/?utm_source=x&b=2&a=1#frag") == "http://www.example.com/a/b?a=1&b=2"
    assert url_key("https://www.example.com/a/") == url_key("http://example.com/a") == "example.com/a"
    assert normalize_url("https://example.com:8443/") == "https://example.com:8443/"
    assert crawl_time("2023-06-01T00:00:00Z") > crawl_time("CC-MAIN-2023-05") > crawl_time("2022-12-31") > 0
    assert crawl_time("not a date") == 0


def test_url_dedup_keeps_most_recent_crawl(tmp_path):
    texts = stdlib_texts(12)
    # 8 URLs; URL i is crawled (i % 3) + 1 times, with a different page each time
    records, newest = [], {}
    t = 0
    for i in range(8):
        for crawl in range((i % 3) + 1):
            date = f"202{crawl}-0{1 + i % 9}-01T00:00:00Z"
            url = f"http://{'www.' if crawl % 2 else ''}site.org/page{i}?utm_source=feed" if crawl else f"https://site.org/page{i}"
            records.append((url, date, page(texts[t % 12] + f"\nversion {crawl} of page {i}"), "text/html"))
            newest[i] = f"version {crawl} of page {i}"
            t += 1
    write_warc(tmp_path / "crawl.warc.gz", records)
    stats = run_curation(recipe([str(tmp_path / "crawl.warc.gz")], tmp_path / "out",
                                minhash={"enabled": False}, line_dedup={"enabled": False}))
    duplicates = sum(i % 3 for i in range(8))
    assert stats["stages"]["url_dedup"]["removed"] == {"url_duplicate": duplicates}
    kept = list(iter_documents(tmp_path / "out" / "data"))
    assert len(kept) == 8 == len(records) - duplicates
    assert sorted(d.text.rsplit("\n", 1)[-1] for d in kept) == sorted(newest.values())
    rejects = list(iter_documents(tmp_path / "out" / "rejects" / "url_dedup"))
    assert len(rejects) == duplicates and all(r.meta["reject_reason"] == "url_duplicate" for r in rejects)


def planted_corpus(seed: int = 0):
    """Base passages plus copies with 0-4.5% of their words replaced: true Jaccard from 1.0 down to ~0.6."""
    rng = random.Random(seed)
    base = stdlib_texts(60, chars=2500)
    docs = list(base)
    for i in range(40):
        words = base[i].split(" ")
        for j in rng.sample(range(len(words)), int(len(words) * (i % 10) * 0.005)):
            words[j] = f"w{rng.randrange(10**6)}"
        docs.append(" ".join(words))
    return docs


def lsh_quality(docs, bands=14, rows=8, ngram=5):
    hasher = MinHasher(ngram, bands, rows, seed=1)
    keys = hasher.band_keys(docs)
    pairs = np.concatenate([bucket_pairs(keys[:, b], np.arange(len(docs), dtype=np.int64)) for b in range(bands)])
    nodes, roots = connected_roots(pairs)
    cluster = dict(zip(nodes.tolist(), roots.tolist()))
    sets = [shingles(d, ngram) for d in docs]
    jaccard = {(a, b): len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in combinations(range(len(docs)), 2)}
    found = {(a, b) for a, b in jaccard if a in cluster and cluster.get(a) == cluster.get(b)}
    return jaccard, found


def test_minhash_finds_planted_near_duplicates():
    docs = planted_corpus()
    jaccard, found = lsh_quality(docs)
    true = {p for p, j in jaccard.items() if j >= 0.8}
    assert len(true) >= 12
    recall = len(true & found) / len(true)
    assert recall >= 0.9, recall  # P(match | J=0.8) = 1 - (1 - 0.8^8)^14 = 0.92
    precision = sum(jaccard[p] >= 0.65 for p in found) / len(found)
    assert precision == 1.0, sorted((p, round(jaccard[p], 2)) for p in found if jaccard[p] < 0.65)
    assert sum(jaccard[p] < 0.3 for p in found) == 0


def test_union_find_roots_are_smallest_and_order_free():
    pairs = np.array([[5, 9], [1, 9], [7, 8], [8, 3], [2, 1], [10, 11]])
    for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]):
        nodes, roots = connected_roots(pairs[order])
        assert dict(zip(nodes.tolist(), roots.tolist())) == {1: 1, 2: 1, 5: 1, 9: 1, 3: 3, 7: 3, 8: 3, 10: 10, 11: 10}


def test_minhash_stage_removes_one_per_cluster(tmp_path):
    docs = planted_corpus()
    write_jsonl(tmp_path / "a.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(docs[:50])])
    write_jsonl(tmp_path / "b.jsonl", [{"id": f"d{i + 50}", "text": t} for i, t in enumerate(docs[50:])])
    stats = run_curation(recipe([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], tmp_path / "out",
                                line_dedup={"enabled": False}, engine={"workers": 2}))
    _, found = lsh_quality(docs)
    members = {b for _, b in found} | {a for a, _ in found}
    roots = {min(c) for c in _components(found)}
    assert stats["stages"]["minhash"]["removed"] == {"near_duplicate": len(members) - len(roots)}
    kept = {d.id for d in iter_documents(tmp_path / "out" / "data")}
    assert kept == {f"d{i}" for i in range(len(docs)) if i not in members or i in roots}


def _components(pairs):
    parent = {}
    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x
    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    groups = {}
    for x in list(parent):
        groups.setdefault(find(x), set()).add(x)
    return list(groups.values())


def test_line_dedup_removes_lines_seen_more_than_six_times_per_bucket(tmp_path):
    texts = stdlib_texts(20, chars=600)
    docs = []
    for i, t in enumerate(texts):
        lines = [t]
        if i < 7:
            lines.append("Subscribe to our newsletter!")  # 7 times in bucket 0: removed
        if 10 <= i < 16:
            lines.append("Share this page")  # 6 times in bucket 1: kept
        if i % 5 == 0:
            lines.append("Cookie settings")  # 2 + 2 times, across buckets: kept
        docs.append({"id": f"d{i}", "text": "\n".join(lines)})
    docs.append({"id": "only-boilerplate", "text": "Subscribe to our newsletter!\n\n"})  # alone in bucket 2: kept
    write_jsonl(tmp_path / "d.jsonl", docs)
    stats = run_curation(recipe([str(tmp_path / "d.jsonl")], tmp_path / "out", minhash={"enabled": False},
                                url_dedup={"enabled": False}, line_dedup={"bucket_docs": 10}))
    line_stats = stats["stages"]["line_dedup"]
    assert line_stats["lines_removed"] == 7 and line_stats["frequent_lines"] == 1
    kept = {d.id: d.text for d in iter_documents(tmp_path / "out" / "data")}
    assert len(kept) == 21 and not any("Subscribe" in t for k, t in kept.items() if k != "only-boilerplate")
    assert sum("Share this page" in t for t in kept.values()) == 6
    assert sum("Cookie settings" in t for t in kept.values()) == 4


def near_duplicate_chains(chains: int = 3, length: int = 12, seed: int = 0) -> list[list[str]]:
    """Chains of documents, each 1% of words away from the one before: neighbours are near-duplicates
    (J ~ 0.85), the two ends are not (J ~ 0.3), so only transitivity puts a chain into one cluster."""
    rng = random.Random(seed)
    out = []
    for c, base in enumerate(stdlib_texts(chains, chars=4000)):
        words = base.split(" ")
        chain = [base]
        for step in range(1, length):
            for j in rng.sample(range(len(words)), len(words) // 100):
                words[j] = f"c{c}s{step}w{j}"
            chain.append(" ".join(words))
        out.append(chain)
    return out


def test_chains_of_near_duplicates_cluster_the_same_under_any_partition_count(tmp_path):
    chains = near_duplicate_chains()
    for chain in chains:
        first, last = shingles(chain[0], 5), shingles(chain[-1], 5)
        assert len(first & last) / len(first | last) < 0.4
    # shuffled over 3 input files, so a chain's smallest doc key sits anywhere along it
    placed = [(c, i) for c, chain in enumerate(chains) for i in range(len(chain))]
    random.Random(1).shuffle(placed)
    shards = [placed[0:12], placed[12:24], placed[24:]]
    key_of = {}
    for shard, members in enumerate(shards):
        write_jsonl(tmp_path / f"s{shard}.jsonl", [{"id": f"c{c}d{i}", "text": chains[c][i]} for c, i in members])
        key_of.update({f"c{c}d{i}": int(doc_key(shard, position)) for position, (c, i) in enumerate(members)})
    ids = list(key_of)
    texts = {f"c{c}d{i}": chains[c][i] for c, i in placed}
    band_keys = MinHasher(5, 14, 8, seed=1).band_keys([texts[i] for i in ids])
    keys = np.array([key_of[i] for i in ids], dtype=np.int64)
    nodes, roots = connected_roots(np.concatenate([bucket_pairs(band_keys[:, b], keys) for b in range(14)]))
    expected = {i: describe_key(dict(zip(nodes.tolist(), roots.tolist()))[key_of[i]]) for i in ids}
    chain_roots = {c: min(key_of[f"c{c}d{i}"] for i in range(12)) for c in range(3)}
    assert expected == {f"c{c}d{i}": describe_key(chain_roots[c]) for c, i in placed}  # one cluster per chain
    inputs = [str(tmp_path / f"s{shard}.jsonl") for shard in range(3)]
    rounds = set()
    for partitions in (1, 3, 16):
        out = tmp_path / f"out{partitions}"
        stats = run_curation(recipe(inputs, out, minhash={"cluster_partitions": partitions},
                                    line_dedup={"enabled": False}))
        minhash = stats["stages"]["minhash"]
        assert minhash["removed"] == {"near_duplicate": 33} and minhash["clusters"] == 3
        rounds.add(minhash["cluster_rounds"])
        removed = {d.id: d.meta["duplicate_of"] for d in iter_documents(out / "rejects" / "minhash")}
        assert removed == {i: root for i, root in expected.items() if key_of[i] not in chain_roots.values()}
        kept = {d.id for d in iter_documents(out / "data")}
        assert kept == {i for i in ids if key_of[i] in chain_roots.values()}
    assert len(rounds) == 1 and rounds.pop() >= 5  # labels travel one edge per round, whatever the partitioning
