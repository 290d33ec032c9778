#!/bin/bash
# mkckpt.sh DIR OUTNAME : run collect with checkpoint-every 100, pause at checkpoint-saved, SIGKILL it
cd $1; export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
rm -f /tmp/probes/reached_ck
UNMEMORIZE_FAULT_PAUSE=checkpoint-saved UNMEMORIZE_FAULT_FILE=/tmp/probes/reached_ck unmemorize collect --model llama --data clean.txt --out $2 --seq-len 32 --max-tokens 1500 --no-progress --checkpoint-every 100 > /dev/null 2>&1 &
pid=$!
for i in $(seq 1 120); do [ -f /tmp/probes/reached_ck ] && break; sleep 0.5; done
kill -KILL $pid; wait $pid 2>/dev/null
ls -la .$2.checkpoint
