"""Quality labels from a pasture model as teacher: a model trained on prose finds prose predictable."""

from test_filters_quality import low_quality_pages, stdlib_docstrings

from pasture.cli import main
from pasture.data.filters.base import TextFeatures
from pasture.data.filters.quality import TextClassifier
from pasture.data.filters.teacher import label_by_teacher
from pasture.documents import Document, write_documents
from pasture.tokenizer import Tokenizer, train_tokenizer
from pasture import runs
from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe
from pasture.train.tokenize import tokenize_documents
from pasture.train.validation import text_losses


def test_teacher_labels_prose_high_and_boilerplate_low(tmp_path):
    """120 mixed documents (60 prose, 30 navigation boilerplate, 30 word salad), 36 per label.

    What the small teacher tells apart, counted by each document's origin: prose is most
    predictable and navigation boilerplate least. Word salad drawn from the prose's own
    vocabulary it does not tell apart (7 of 30 pages land among the positives, none among the
    negatives; 10 after 150 steps): a teacher this small scores words more than their order.
    Each document is counted by where it came from, so salad is never counted as prose."""
    prose = stdlib_docstrings()[:120]
    salad = low_quality_pages(prose, 60)
    write_documents(tmp_path / "prose.jsonl", [Document(f"p{i}", t) for i, t in enumerate(prose)])
    write_documents(tmp_path / "mixed.jsonl", [Document(f"m{i}", t) for i, t in enumerate(prose[:60] + salad)])
    train_tokenizer(tmp_path / "prose.jsonl", 400, tmp_path / "tok", show_progress=False)
    tokenize_documents(tmp_path / "prose.jsonl", tmp_path / "tok", tmp_path / "tokens", workers=1,
                       val_fraction=0.05, progress=False)
    raw = load_recipe("tiny", [
        'data.train=["%s"]' % (tmp_path / "tokens"), 'log.dir="%s"' % (tmp_path / "teacher"),
        "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.multiple_of=32",
        "train.steps=30", "train.anneal_steps=0", "train.batch_ramp=[]", "train.batch_size=8", "train.seq_len=64",
        "optim.warmup_steps=5", "eval.every=0", "checkpoint.every=30", "checkpoint.anneal_every=0",
        "log.progress=false", "log.tensorboard=false", "data.lanes=4"])
    pretrain(parse_recipe(raw), raw, log=lambda *_: None)

    teacher, _ = runs.load(tmp_path / "teacher")
    tokenizer = Tokenizer.load(tmp_path / "teacher" / "tokenizer.model")
    positive, negative, stats = label_by_teacher(tmp_path / "mixed.jsonl", lambda texts: text_losses(teacher, tokenizer, texts),
                                                 fraction=0.3)
    # low_quality_pages alternates navigation boilerplate (even) and word salad (odd)
    kinds = {"prose": prose[:60], "boilerplate": salad[0::2], "word salad": salad[1::2]}
    origin = {" ".join(TextFeatures(t).lower_words): kind for kind, texts in kinds.items() for t in texts}
    assert stats["per_label"] == 36 and len(positive) == len(negative) == 36
    positive_kinds = [origin[" ".join(words)] for words in positive]
    negative_kinds = [origin[" ".join(words)] for words in negative]
    counts = {label: {kind: found.count(kind) for kind in kinds} for label, found in
              (("positive", positive_kinds), ("negative", negative_kinds))}
    # measured: positive 29 prose + 7 word salad, negative 25 boilerplate + 11 prose
    assert counts["positive"]["prose"] >= 26 and counts["positive"]["boilerplate"] == 0, counts
    assert counts["negative"]["boilerplate"] >= 23 and counts["negative"]["word salad"] <= 2, counts
    assert stats["documents"] == 120

    assert main(["curate", "train-quality", "--teacher", str(tmp_path / "teacher"), "--unlabeled",
                 str(tmp_path / "mixed.jsonl"), "--out", str(tmp_path / "clf"), "--epochs", "3", "--buckets", "4096"]) == 0
    assert TextClassifier.load(tmp_path / "clf").metrics["teacher"]["per_label"] == 36
