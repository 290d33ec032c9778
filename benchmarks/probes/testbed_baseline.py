"""Baseline scores of a trained testbed folder: memorized strict per set, task accuracy, perplexity.

    .venv/bin/python benchmarks/probes/testbed_baseline.py ~/.cache/unmemorize/testbed/<key>
"""
import sys, json, torch
from unmemorize.models import load_model
from unmemorize.testbed.suite import TestbedSuite
folder = sys.argv[1]
torch.set_num_threads(1)
model, tok = load_model(folder + "/model")
suite = TestbedSuite(folder, tok, perplexity_tokens=10000, sweep_perplexity_tokens=2000)
r = suite.evaluate(model)
print({k: (v["strict"] if isinstance(v, dict) and "strict" in v else None) for k, v in r.items() if isinstance(v, dict) and "strict" in v})
print({k: v["accuracy"] for k, v in r["tasks"].items()}, r["perplexity"])
