"""The GPU check kit (issue #19): one prepared call measures everything GPU-side; `--dry-run` keeps it honest here.

    python -m benchmarks.gpu prepare                    # here: wheels + tokenizer into .gpukit/, prints the call
    python3 -m benchmarks.gpu run --out $OUT            # on the device (the printed call): install, then the matrix
    python -m benchmarks.gpu run --dry-run --out DIR    # here, on the CPU: the same matrix at tiny sizes (a test)

benchmarks/gpu/prepare.py: what travels; run.py: the device entry (install, time-boxed steps, partial JSON);
matrix.py: the fixed matrix and its sizes; arms.py: the training arms and MFU; guards.py: correctness on CUDA.
"""

import sys

if len(sys.argv) < 2 or sys.argv[1] not in ("prepare", "run"):
    sys.exit(__doc__)
command = sys.argv.pop(1)
if command == "prepare":
    from benchmarks.gpu.prepare import main
else:
    from benchmarks.gpu.run import main
main(sys.argv[1:])
