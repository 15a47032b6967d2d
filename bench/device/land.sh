#!/usr/bin/env bash
# land.sh: the checks and figures a landing needs, in one device call (run from the repository root
# on the GPU machine, with .deps and .golden carried; see tests/device.sh).
#   bash bench/device/land.sh COMMIT [checks|figures]
# Builds, runs the GPU suite, writes the decode and prefill rows of `moejit bench` (graph replay,
# floor measured in the same run) to $OUT/decode.jsonl and $OUT/prefill.jsonl, times a few rows
# again with MOEJIT_PDL=0, runs compute-sanitizer (memcheck on the golden, CUDA graph, bad-id,
# decode, every-configuration, device-side token count and self-routed tile tests, leaving out the
# graphs of 1024 tokens that would take it past a call's 10 minutes; racecheck on the golden and
# self-routed ones) and prints one forward's kernels at one
# token (bench/device/kernels.py). COMMIT is what the JSON lines name (the machine has no .git).
# PART (optional): checks (the GPU suite, the sanitizers and the SASS counts of the wgmma kernels),
# figures (the bench rows and kernels.py), or python (the binding's tests with torch and
# transformers: experts, graphs, torch.compile, the transformers experts implementation), for
# device calls of under 10 minutes each; all = checks and figures. Parts of one piece of work
# each, for a first device call after it: new (the GPU tests of MXFP4 weights, then memcheck and
# racecheck on the MXFP4 golden cases and the special scales), new2 (those of the activations and
# batch invariance, memcheck on the activation golden cases), wgmx (the wgmma GEMMs on MXFP4
# weights, under a timeout, then racecheck), mxfp4 (bench rows of both gpt-oss models with MXFP4 and bf16 weights in one
# run, $OUT/mxfp4.jsonl), invariant (bench rows with --batch-invariant off and on, alternating,
# $OUT/invariant.jsonl), mixtral (the mixtral-8x7b preset on normal data, $OUT/mixtral.jsonl),
# soak (test_soak for 240 s: four threads, three plans, bitwise the sequential results).
set -u
export MOEJIT_CACHE_DIR=/tmp/mjland MOEJIT_COMMIT=${1:?usage: land.sh COMMIT [checks|figures]}
PART=${2:-all}
case $PART in all | checks | figures | python | new | new2 | wgmx | mxfp4 | invariant | mixtral | soak) ;;
*) echo "land.sh: PART is checks, figures, python, new, new2, wgmx, mxfp4, invariant, mixtral or" \
     "soak, got $PART" >&2
   exit 2 ;; esac
OUT=${OUT:-/tmp/land-out}
mkdir -p "$OUT"
bash tests/device.sh true || exit 1
cd build-dev || exit 1
export LD_LIBRARY_PATH=$PWD/../.deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export MOEJIT_GOLDEN_DIR=$PWD/../.golden
if [ "$PART" = python ]; then
  MOEJIT_LIBRARY=$PWD/libmoejit.so python3 -m pytest -q -rs -p no:cacheprovider ../python/tests \
    >"$OUT/python.txt" 2>&1
  rc=$?
  tail -15 "$OUT/python.txt"
  exit $rc
fi
case $PART in
new)
  MOEJIT_TEST_FILTER=mxfp4 ./tests/test_rt_gpu >"$OUT/gpu-new.txt" 2>&1
  grep -E "FAIL|ERROR|LINE|PASSED" "$OUT/gpu-new.txt" | tail -8
  MOEJIT_TEST_FILTER=mxfp4_golden,special_scales compute-sanitizer --tool memcheck \
    ./tests/test_rt_gpu 2>&1 | grep -E "ERROR SUMMARY|PASSED|FAILED"
  MOEJIT_TEST_FILTER=mxfp4_golden,special_scales compute-sanitizer --tool racecheck \
    ./tests/test_rt_gpu 2>&1 | grep -E "RACECHECK SUMMARY|PASSED|FAILED"
  exit 0 ;;
wgmx)
  # the wgmma GEMMs on MXFP4 weights, never run before: a hang ends at 240 s, not the call's limit
  MOEJIT_TEST_FILTER=wgmx timeout 240 stdbuf -oL ./tests/test_rt_gpu >"$OUT/gpu-wgmx.txt" 2>&1
  rc=$?
  echo "exit $rc"
  grep -E "golden|wgmma|FAIL|ERROR|LINE|PASSED" "$OUT/gpu-wgmx.txt" | tail -12
  [ $rc -eq 0 ] && MOEJIT_TEST_FILTER=wgmx timeout 240 compute-sanitizer --tool racecheck \
    ./tests/test_rt_gpu 2>&1 | grep -E "RACECHECK SUMMARY|PASSED|FAILED"
  exit $rc ;;
new2)
  MOEJIT_TEST_FILTER=act,batch_invariance ./tests/test_rt_gpu >"$OUT/gpu-new2.txt" 2>&1
  grep -E "FAIL|ERROR|LINE|PASSED" "$OUT/gpu-new2.txt" | tail -8
  MOEJIT_TEST_FILTER=act_golden compute-sanitizer --tool memcheck ./tests/test_rt_gpu 2>&1 |
    grep -E "ERROR SUMMARY|PASSED|FAILED"
  exit 0 ;;
mxfp4)
  for m in gpt-oss-20b gpt-oss-120b; do
    for w in mxfp4 dense mxfp4 dense; do
      ./moejit bench --model $m --weights $w --tokens 1,8,64,512 --json "$OUT/mxfp4.jsonl" 2>&1 |
        tail -5
    done
  done
  exit 0 ;;
invariant)
  for m in gpt-oss-20b gpt-oss-120b; do
    for bi in "" --batch-invariant "" --batch-invariant; do
      ./moejit bench --model $m $bi --tokens 1,8,64,512,4096 --json "$OUT/invariant.jsonl" 2>&1 |
        tail -6
    done
  done
  exit 0 ;;
soak)
  MOEJIT_SOAK_SECONDS=240 MOEJIT_TEST_FILTER=soak ./tests/test_rt_gpu 2>&1 |
    grep -E "soak|FAIL|ERROR|LINE|PASSED"
  exit 0 ;;
mixtral)
  ./moejit bench --model mixtral-8x7b --data normal --tokens 1,8,64,512,4096 \
    --json "$OUT/mixtral.jsonl" 2>&1 | tail -6
  exit 0 ;;
esac
if [ "$PART" != figures ]; then
# the tests of the part `new` run in a call of their own
MOEJIT_TEST_SKIP=mxfp4,act,batch_invariance,wgmx ./tests/test_rt_gpu > "$OUT/gpu.txt" 2>&1
grep -E "FAIL|ERROR|LINE|PASSED" "$OUT/gpu.txt" | tail -5
MOEJIT_TEST_FILTER=golden,cuda_graph,bad_expert_ids,decode,every_config,device_tokens,self_routed compute-sanitizer --tool memcheck \
  ./tests/test_rt_gpu 2>&1 | grep -E "ERROR SUMMARY|PASSED|FAILED"
MOEJIT_TEST_FILTER=golden,self_routed compute-sanitizer --tool racecheck ./tests/test_rt_gpu 2>&1 |
  grep -E "RACECHECK SUMMARY|PASSED|FAILED"
echo "HGMMA per moejit_wgmma cubin (count of cubins, instructions):"
PATH=/usr/local/cuda/bin:$PATH python3 ../bench/device/sass.py "$MOEJIT_CACHE_DIR" HGMMA |
  grep moejit_wgmma | awk '{print $NF}' | sort | uniq -c
fi
if [ "$PART" != checks ]; then
D=$OUT/decode.jsonl P=$OUT/prefill.jsonl
./moejit bench --model gpt-oss-20b --tokens 1,8,64,512 --json "$D" 2>&1 | tail -5
./moejit bench --model gpt-oss-120b --tokens 1,8,64,512 --json "$D" 2>&1 | tail -5
./moejit bench --model gpt-oss-20b --tokens 4096,16384,65536 --json "$P" 2>&1 | tail -4
./moejit bench --model gpt-oss-120b --tokens 4096,16384 --json "$P" 2>&1 | tail -3
./moejit bench --model gpt-oss-20b --tokens 262144 --json "$P" 2>&1 | tail -2
echo "== MOEJIT_PDL=0"
MOEJIT_PDL=0 ./moejit bench --model gpt-oss-20b --tokens 1,64,4096 --no-floor 2>&1 | tail -3
MOEJIT_PDL=0 ./moejit bench --model gpt-oss-120b --tokens 1,4096 --no-floor 2>&1 | tail -2
python3 ../bench/device/kernels.py ./moejit --model gpt-oss-20b --tokens 1 2>&1 | tail -7
fi
