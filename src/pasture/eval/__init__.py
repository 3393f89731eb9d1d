"""Evaluation: lm-eval's tasks on data shipped in pip packages, batched log-likelihood scoring,
generation through the serving engine, sandboxed code execution, and an lm-eval adapter.

    from pasture.eval.lm import load_eval_model
    from pasture.eval.evaluator import evaluate, EvalSettings
    results = evaluate(load_eval_model("runs/tiny/train"), ["arc_easy"], EvalSettings(limit=100))
    print(pasture.eval.tables.results_table(results))
"""
