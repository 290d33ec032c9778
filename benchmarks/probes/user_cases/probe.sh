#!/bin/bash
# usage: probe.sh CASE_ID WORKDIR TIMEOUT -- command...
id=$1; wd=$2; to=$3; shift 4
out=/tmp/probes/logs/$id; mkdir -p $out
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
snap() { (cd "$wd" && find . -mindepth 1 \( -type f -printf '%p F ' -exec sh -c 'sha256sum "$1" | cut -c1-16' _ {} \; \) -o \( ! -type f -printf '%p %y -> %l\n' \) 2>/dev/null | sort); }
snap > $out/before
echo "$*" > $out/cmd
cd "$wd"
start=$(date +%s.%N)
timeout $to "$@" > $out/stdout 2> $out/stderr; rc=$?
end=$(date +%s.%N)
echo $rc > $out/rc
snap > $out/after
echo "== $id rc=$rc time=$(echo "$end - $start" | bc)s"
echo "-- stderr tail:"; grep -v '^\s*$' $out/stderr | grep -v 'it/s\]' | tail -3
echo "-- diff before/after:"; diff $out/before $out/after
