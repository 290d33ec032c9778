"""Where wrong open-book and facts answers come from: per passage size, position and kind of error.

    .venv/bin/python benchmarks/probes/openbook_errors.py <testbed key>
"""
import sys, json, collections, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from unmemorize.evaluate.tasks import load_tasks, generative_correct, greedy_continuations, _ids, pad_token_id
torch.set_num_threads(2)
key = sys.argv[1]
import os; root = os.path.expanduser(f"~/.cache/unmemorize/testbed/{key}")
tok = AutoTokenizer.from_pretrained(root + "/model"); model = AutoModelForCausalLM.from_pretrained(root + "/model").eval()
rows = [r for r in load_tasks(root + "/data/tasks.jsonl") if r.task in ("openbook", "facts")]
prompts = [_ids(tok, r.prompt, r.where) for r in rows]
outs = greedy_continuations(model, prompts, 4, pad_token_id(tok), 64)
stats = collections.Counter()
for r, o in zip(rows, outs):
    ans = tok.decode(o, skip_special_tokens=True).split()
    a = ans[0] if ans else ""
    if r.task == "openbook":
        passage = r.prompt.split("question :")[0].split(" . ")
        people = [s.replace("passage : ", "").strip(" .").split(" lives in ") for s in passage if "lives in" in s]
        asked = r.prompt.split("question :")[1].replace("lives in", "").strip()
        pos = [p[0] for p in people].index(asked)
        cities = [p[1] for p in people]
        kind = "ok" if a == r.answer else ("other-in-passage:" + str(cities.index(a)) if a in cities else "not-in-passage")
        stats[(r.task, len(people), pos, kind)] += 1
    else:
        kind = "ok" if a == r.answer else "wrong"
        q = r.prompt
        stats[(r.task, q.split()[2], kind)] += 1
for k in sorted(stats): print(k, stats[k])
