"""The Ray engine runs the same recipe to the same output as local processes."""

from curate_corpus import page, recipe, stdlib_texts, write_jsonl, write_warc

from pasture.data.curate import run_curation
from pasture.documents import iter_documents


def test_ray_engine_matches_local_engine(tmp_path):
    texts = stdlib_texts(16, chars=1500)
    write_warc(tmp_path / "a.warc.gz", [(f"http://x.org/{i % 5}", f"2024-0{1 + i // 5}-01T00:00:00Z", page(t), "text/html")
                                        for i, t in enumerate(texts[:8])])
    write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": t + "\nShared footer line"} for i, t in enumerate(texts[6:])]
                + [{"id": f"copy{i}", "text": texts[i] + " extra"} for i in range(8, 11)])
    inputs = [str(tmp_path / "a.warc.gz"), str(tmp_path / "b.jsonl")]
    local = run_curation(recipe(inputs, tmp_path / "local", engine={"workers": 2}, line_dedup={"max_count": 3}))
    ray_stats = run_curation(recipe(inputs, tmp_path / "ray", engine={"kind": "ray", "workers": 2},
                                    line_dedup={"max_count": 3}))
    ids = {name: sorted((d.id, d.text) for d in iter_documents(tmp_path / name / "data")) for name in ("local", "ray")}
    assert ids["local"] == ids["ray"]
    for stage in ("url_dedup", "minhash", "line_dedup", "output"):
        assert ray_stats["stages"][stage]["removed"] == local["stages"][stage]["removed"]
        assert ray_stats["stages"][stage]["docs_out"] == local["stages"][stage]["docs_out"]
    assert local["stages"]["url_dedup"]["removed"] == {"url_duplicate": 3}
    assert local["stages"]["minhash"]["removed"] == {"near_duplicate": 5}  # 3 copies + 2 overlapping texts
    # the footer is on 8 surviving docs (> 3); frequent stdlib lines such as '"""' go too
    assert local["stages"]["line_dedup"]["lines_removed"] == ray_stats["stages"]["line_dedup"]["lines_removed"] >= 8
    assert not any("Shared footer line" in text for _, text in ids["ray"])
