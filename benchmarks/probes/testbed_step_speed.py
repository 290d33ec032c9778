"""Seconds per training step of the testbed model, float32 vs bf16 autocast, on this CPU.

    .venv/bin/python benchmarks/probes/testbed_step_speed.py [--bf16]

One AdamW step on a (32, 128) batch of random token ids, after 3 warm-up steps, mean of 5.
(bf16 is opt-in because on a CPU without bf16 instructions one step takes about half a minute.)
"""

import sys
import time

import torch

from unmemorize.testbed.train import TrainConfig, build_model

torch.set_num_threads(2)
modes = (False, True) if "--bf16" in sys.argv else (False,)
for bf16 in modes:
    for hidden, intermediate in ((256, 688), (192, 512)):
        model = build_model(TrainConfig(hidden_size=hidden, intermediate_size=intermediate), 1024)
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        batch = torch.randint(3, 1024, (32, 128))
        for step in range(8):
            if step == 3:
                start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"bf16={bf16} width={hidden}: {(time.perf_counter() - start) / 5:.2f} s/step")
