"""Chat-template tokenization of SFT rows in one process vs one per core, by dataset size.

    python -m benchmarks.tokenize_procs [--rows 2000 20000] [--data <alpaca json>]

The alpaca demo rows (repeated to size) are normalised as the SFT recipe does, then tokenized by
`finetune_kit.data.tokenize_sft_dataset` with num_proc 1 and num_proc = cores; the outputs are compared. Writes
benchmarks/results/tokenize_procs.json. It sets where `tokenize_sft_dataset` starts using several processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.arms import SHARED, _alpaca


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tokenize_procs", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--data", default=str(SHARED / "llamafactory_demo" / "alpaca_en_demo.json"))
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    from datasets import Dataset, disable_caching
    from transformers import AutoTokenizer

    from benchmarks.record_run import machine
    from finetune_kit.data import tokenize_sft_dataset
    from finetune_kit.models import resolve_checkpoint
    from finetune_kit.runs import package_versions

    disable_caching()  # each timing tokenizes; none reads a cache file
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("smollm2-135m-instruct"))
    rows, cores, results = _alpaca(Path(opts.data)), os.cpu_count() or 1, []
    for n in opts.rows:
        dataset = Dataset.from_list([rows[i % len(rows)] for i in range(n)])
        timed = {}
        for procs in (1, cores):
            started = time.perf_counter()
            out = tokenize_sft_dataset(dataset, tokenizer, num_proc=procs)
            timed[procs] = (time.perf_counter() - started, out["input_ids"])
        results.append({"rows": n, "seconds_1": timed[1][0], f"seconds_{cores}": timed[cores][0],
                        "speedup": timed[1][0] / timed[cores][0], "same_output": timed[1][1] == timed[cores][1]})
        print(results[-1], flush=True)
    command = "python -m benchmarks.tokenize_procs " + " ".join(argv or sys.argv[1:])
    result = {"name": "tokenize_procs", "command": command.strip(),
              "rows": results, "machine": machine(), "versions": package_versions()}
    Path(opts.results).mkdir(parents=True, exist_ok=True)
    (Path(opts.results) / "tokenize_procs.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
