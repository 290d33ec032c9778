"""Open-book binding from scratch: does a testbed-sized model learn it, and what makes it learnable?

Trains a fresh model (the testbed's TrainConfig, optionally changed) on open-book examples mixed
with grammar text (and optionally copy documents that teach induction: ``copy : w1 .. wk | w1 ..
wk``), then prints the accuracy on the world's own open-book evaluation rows every 100 steps,
plain and with an EOS token before the prompt (training windows pack documents after an EOS),
and at the end the greedy answers to the first 8 rows. Copy documents are the world's own
(``world.copy_document``).

    .venv/bin/python benchmarks/probes/openbook_scratch_probe.py --steps 500 [--copy 0.2] [--openbook 0.5]
        [--hidden 192] [--intermediate 512] [--layers 4] [--lr 2e-3] [--seed 0]
"""
import argparse
import math
import random

import torch

from unmemorize.evaluate import evaluate_tasks
from unmemorize.evaluate.generate import greedy_continuations
from unmemorize.testbed import world as W
from unmemorize.testbed.train import TrainConfig, build_model, train_tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=500)
parser.add_argument("--copy", type=float, default=0.0, help="fraction of documents that are copy documents")
parser.add_argument("--openbook", type=float, default=0.5, help="fraction of documents that are open-book examples")
parser.add_argument("--hidden", type=int, default=192)
parser.add_argument("--intermediate", type=int, default=512)
parser.add_argument("--layers", type=int, default=4)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.set_num_threads(2)

world = W.build_world(W.WorldConfig(seed=args.seed))


def documents(rng, count):
    grammar = W.Grammar(rng)
    out = []
    while len(out) < count:
        u = rng.random()
        if u < args.openbook:
            prompt, answer = W.openbook_example(rng)
            if prompt in world.heldout_openbook:
                continue
            out.append(f"{prompt} {answer} .")
        elif u < args.openbook + args.copy:
            out.append(W.copy_document(rng))
        else:
            out.append(grammar.document())
    return out


rng = random.Random(f"probe-{args.seed}")
tokenizer = train_tokenizer(documents(random.Random(1), 20000) + [" ".join(W.SYLLABLES)], 1024)
config = TrainConfig(seed=args.seed, hidden_size=args.hidden, intermediate_size=args.intermediate, layers=args.layers)
model = build_model(config, len(tokenizer))
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
rows = [r for r in W.evaluation_tasks(world) if r["task"] == "openbook"]
eos_rows = [dict(r, prompt="<eos> " + r["prompt"]) for r in rows]
eos = tokenizer.eos_token_id
for step in range(args.steps + 1):
    if step % 100 == 0:
        model.eval()
        plain = evaluate_tasks(model, tokenizer, rows).tasks["openbook"].accuracy
        with_eos = evaluate_tasks(model, tokenizer, eos_rows).tasks["openbook"].accuracy
        print(f"step {step}: open-book {plain:.3f} (with EOS before the prompt {with_eos:.3f})", flush=True)
        model.train()
    if step == args.steps:
        break
    stream = []
    while len(stream) < 32 * 128:
        for ids in tokenizer(documents(rng, 64), add_special_tokens=False)["input_ids"]:
            stream += ids + [eos]
    batch = torch.tensor(stream[: 32 * 128]).view(32, 128)
    lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(input_ids=batch, labels=batch).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

model.eval()
for row in rows[:8]:
    ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    out = greedy_continuations(model, [ids], 4, 0)[0]
    print(repr(row["prompt"][-60:]), "->", repr(tokenizer.decode(out)), "| answer", row["answer"],
          "| prompt tokens", tokenizer.convert_ids_to_tokens(ids)[-12:])
