"""Bytes per sample of the shard format at the real shapes (Qwen3.5-9B: vocab 248320, d 4096, K 128).

    python bench/shard_bytes.py [--out bench/results/shard_bytes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path


from synthetic_shards import write_synthetic_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--out", default="bench/results/shard_bytes.json")
    args = p.parse_args()
    rows = []
    for prefix_len in (1, 512):
        for cond in (False, True):
            for compress in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    m = write_synthetic_shards(Path(tmp), args.samples, vocab=248320, block_len=128,
                                               prefix_len=prefix_len, hidden=4096 if cond else None,
                                               compress=compress)
                    rows.append({"prefix_len": prefix_len, "cond": cond, "compress": compress,
                                 "bytes_per_sample": round(m.bytes_per_sample, 1)})
                    print(rows[-1], flush=True)
    result = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
              "samples": args.samples, "note": "Zipf-like random ids in [0, 248320); C ~ N(0, 1) in bf16",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
