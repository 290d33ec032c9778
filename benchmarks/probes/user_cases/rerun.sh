#!/bin/bash
# Re-run every case on the current tree, fresh fixtures under /tmp/probes/r
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
P=/tmp/probes/bin/probe.sh; B=/tmp/probes/base; R=/tmp/probes/r
rm -rf $R; mkdir -p $R
fresh() { mkdir -p $R/$1; cp -r $B/llama $B/clean.txt $R/$1/; cd $R/$1; }
q() { "$@" >/dev/null 2>&1; }
# 1
fresh c1; q unmemorize collect --model llama --data clean.txt --out OUT --seq-len 32 --max-tokens 1500 --no-progress
cp clean.txt OUT/notes.txt; mkdir D2; ln -s ../OUT/notes.txt D2/b.txt
$P r1 $PWD 120 -- unmemorize collect --model llama --data D2 --out OUT --overwrite --seq-len 32 --max-tokens 1500 --no-progress
# 2
fresh c2; cp -r $B/F .; q unmemorize edit --model llama --factors F --out OUT --rho 0.99
mkdir M2; cp llama/*.json M2/; ln -s ../OUT/model.safetensors M2/model.safetensors
$P r2 $PWD 120 -- unmemorize edit --model M2 --factors F --out OUT --overwrite --rho 0.8 --allow-foreign-factors
# 3
fresh c3; mkdir U; echo precious > U/keep.txt; ln -s U .OUT.checkpoint
$P r3 $PWD 120 -- unmemorize collect --model llama --data clean.txt --out OUT --seq-len 32 --max-tokens 1500 --no-progress --checkpoint-every 100
# 4
fresh c4; mkdir D; cp clean.txt D/a.txt; mkfifo D/z.txt
$P r4 $PWD 60 -- unmemorize collect --model llama --data D --out OUT --seq-len 32 --max-tokens 0 --no-progress
# 5
fresh c5; cp -r $B/gpt2 .; cp /tmp/probes/c5/*.jsonl .
$P r5a $PWD 120 -- unmemorize stress --model gpt2 --items long.jsonl --out s2.json
$P r5b $PWD 120 -- unmemorize stress --model llama --items long.jsonl --out s1.json
$P r5c $PWD 120 -- unmemorize stress --model gpt2 --items short.jsonl --checks ndcg --baseline gpt2 --ndcg-data clean.txt --out s4.json
$P r5d $PWD 120 -- unmemorize stress --model gpt2 --items short.jsonl --checks relearn --relearn-text clean.txt --relearn-seq-len 512 --relearn-steps 2 --out s6.json
$P r5e $PWD 120 -- unmemorize stress --model gpt2 --items short.jsonl --checks relearn --relearn-items long.jsonl --relearn-steps 2 --out s8.json
$P r5f $PWD 120 -- unmemorize stress --model gpt2 --items long.jsonl --checks sample --samples 2 --out s9.json
$P r5g $PWD 120 -- unmemorize stress --model llama --items short.jsonl --checks ndcg --baseline llama --ndcg-data clean.txt --ndcg-seq-len 512 --out s5.json
# 6
fresh c6; cp /tmp/probes/c6/latin1.txt .; cp -r $B/F .
$P r6 $PWD 120 -- unmemorize stress --model llama --items /tmp/probes/c5/short.jsonl --checks ndcg --baseline llama --ndcg-data latin1.txt --ndcg-seq-len 64 --out s2.json
# 7, 8
fresh c7; head -20 clean.txt > forget.txt
$P r7 $PWD 120 -- unmemorize unlearn bsn --model llama --forget forget.txt --retain clean.txt --out U1 --seq-len 32 --ratio 0.0001 --no-progress
$P r8 $PWD 120 -- unmemorize unlearn bsn --model llama --forget clean.txt --retain clean.txt --out U --seq-len 32 --no-progress
# 9, 10
fresh c9; cp -r $B/F .; echo '{"0": {}}' > plan.json; echo '{"1": {"up": 0.8}}' > plan1.json
$P r9 $PWD 120 -- unmemorize edit --model llama --factors F --out E1 --plan plan.json
$P r10a $PWD 120 -- unmemorize edit --model llama --factors F --out E2 --plan plan1.json --layers 0
$P r10b $PWD 120 -- unmemorize edit --model llama --factors F --out E3 --ppl-budget 1.1 --heldout clean.txt --layers 0 --search-seq-len 32 --search-tokens 800 --search-rhos 0.9
# 11
fresh c11; cp -r $B/gpt2 .
$P r11a $PWD 120 -- unmemorize collect --model gpt2 --data clean.txt --out F --targets lm_head --seq-len 32 --max-tokens 1500 --no-progress
[ -d F ] && $P r11b $PWD 120 -- unmemorize edit --model gpt2 --factors F --out E --rho 0.8 --targets lm_head
# 12
fresh c12; cp -r /tmp/probes/c12/real_sub /tmp/probes/c12/D2 /tmp/probes/c12/D3 /tmp/probes/c12/D4 .; mkdir D1; cp clean.txt D1/a.txt; ln -s ../real_sub D1/linked
for d in D1 D2 D3 D4; do $P r12_$d $PWD 120 -- unmemorize collect --model llama --data $d --out F_$d --seq-len 32 --max-tokens 0 --no-progress; grep -h "^wrote" /tmp/probes/logs/r12_$d/stdout; done
# 13
fresh c13; cp -r /tmp/probes/c13/D .; rm -rf D/F
$P r13 $PWD 120 -- unmemorize collect --model llama --data D --out F --seq-len 32 --max-tokens 0 --no-progress
# 16
mkdir -p $R/c16; cp -r /tmp/probes/c16/R? $R/c16/; cd $R/c16
for r in R1 R2 R3 R4 R5; do $P r16_$r $PWD 120 -- unmemorize compare --quick --seeds 0 --out OUT_$r --reuse $r; done
# 17
fresh c17; cp -r /tmp/probes/c17/task .; sed -i "s#/tmp/probes/c17/task#$PWD/task#" task/tiny_mc.yaml
HF_DATASETS_OFFLINE=1 $P r17 $PWD 120 -- unmemorize eval --model llama --lm-eval tiny_mc --include-path task --limit 8 --bootstrap-iters 0 --out res.json
# 18
fresh c18; ln -s b a; ln -s a b; mkdir D; cp clean.txt D/x.txt; ln -s loop1 D/loop2.txt; ln -s loop2.txt D/loop1
$P r18a $PWD 120 -- unmemorize collect --model llama --data a --out O1 --seq-len 32 --max-tokens 1500 --no-progress
$P r18b $PWD 120 -- unmemorize collect --model a --data clean.txt --out O2 --seq-len 32 --max-tokens 1500 --no-progress
$P r18c $PWD 120 -- unmemorize collect --model llama --data D --out O4 --seq-len 32 --max-tokens 0 --no-progress
# 19
fresh c19; mkdir D; python -c "open(b'D/caf\xe9.txt','wb').write(open('clean.txt','rb').read())"
$P r19 $PWD 120 -- unmemorize collect --model llama --data D --out O1 --seq-len 32 --max-tokens 1500 --no-progress
# 20
fresh c20; cp -r /tmp/probes/c20/good_ckpt .OUT.checkpoint; echo '{"version":1,"settings":[],"windows":"x"}' > .OUT.checkpoint/state.json
$P r20 $PWD 120 -- unmemorize collect --model llama --data clean.txt --out OUT --resume --seq-len 32 --max-tokens 1500 --no-progress --checkpoint-every 100
# 23
cd /tmp/probes/c23; rm -f s4.json s5.json
$P r23a $PWD 120 -- unmemorize stress --model llama --items short.jsonl --checks stress --relearn-text big.txt --out s4.json
$P r23b $PWD 300 -- unmemorize stress --model llama --items short.jsonl --checks relearn --relearn-text big.txt --relearn-steps 0 --out s5.json
echo ALLDONE
