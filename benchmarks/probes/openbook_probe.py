"""Open-book probe: fine-tune a trained testbed on one open-book format only and print held-out accuracy every 50 steps.

    .venv/bin/python benchmarks/probes/openbook_probe.py <testbed key> lives|bare|of|colon <steps>
"""
import sys, os, random, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from unmemorize.testbed import world as W
from unmemorize.evaluate import evaluate_tasks
torch.set_num_threads(2)
key, fmt, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = os.path.expanduser(f"~/.cache/unmemorize/testbed/{key}")
tok = AutoTokenizer.from_pretrained(root + "/model"); model = AutoModelForCausalLM.from_pretrained(root + "/model")
FMT = {"lives": ("{n} lives in {c} .", "{n} lives in"), "bare": ("{n} {c} ,", "{n}"), "of": ("{n} of {c} ,", "{n} of"),
       "colon": ("{n} : {c} .", "{n} :")}
def example(rng):
    count = rng.randint(2, 3); people = []
    while len(people) < count:
        n = W._name(rng, 2)
        if n not in [p for p, _ in people]: people.append((n, rng.choice(W.CITIES)))
    a, c = rng.choice(people); s, q = FMT[fmt]
    return "passage : " + " ".join(s.format(n=n, c=x) for n, x in people) + " question : " + q.format(n=a), c
erng = random.Random(99)
rows = [dict(task="ob", category="open_book_qa", prompt=p, answer=a) for p, a in (example(erng) for _ in range(200))]
rng = random.Random(5)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
eos = tok.eos_token_id
for step in range(steps + 1):
    if step % 50 == 0:
        model.eval(); print(fmt, step, evaluate_tasks(model, tok, rows).tasks["ob"].accuracy, flush=True); model.train()
    if step == steps: break
    stream = []
    while len(stream) < 32 * 128:
        p, a = example(rng); stream += tok(f"{p} {a} .", add_special_tokens=False)["input_ids"] + [eos]
    batch = torch.tensor(stream[: 32 * 128]).view(32, 128)
    loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad(); loss.backward(); opt.step()
