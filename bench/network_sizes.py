"""Parameters and file size of each network kind on the full-size Anima DiT, computed from its shapes.

    python bench/network_sizes.py [--markdown]

The 280 attention/MLP linears of the 28 blocks (what every kind wraps by default), counted by
animad.network_shapes (sd-scripts' and LyCORIS' rules: the same tensors for the same dim/alpha/factor).
File size: the tensors in bf16 plus one alpha per module (the safetensors header and metadata, some
tens of KB, not included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animad import network_shapes  # noqa: E402
from animad.anima.dit import ANIMA_2B  # noqa: E402
from animad.anima.memory import block_linear_shapes  # noqa: E402

SETTINGS = [("lora", 4, -1), ("lora", 8, -1), ("lora", 16, -1), ("lora", 32, -1),
            ("lokr", 4, -1), ("lokr", 16, -1), ("lokr", 100000, -1), ("lokr", 16, 4), ("lokr", 100000, 4),
            ("lokr", 100000, 8), ("lokr", 100000, 16),
            ("loha", 4, -1), ("loha", 8, -1), ("loha", 16, -1), ("loha", 32, -1)]


def rows() -> list[dict]:
    linears = block_linear_shapes(ANIMA_2B) * ANIMA_2B.depth
    out = []
    for kind, dim, factor in SETTINGS:
        values = sum(network_shapes.parameter_count(kind, o, i, dim, factor) for o, i in linears)
        size = network_shapes.file_bytes(kind, linears, dim, factor, 2)
        full = kind == "lokr" and all(network_shapes.lokr_full_w2(o, i, dim, factor) for o, i in linears)
        out.append({"kind": kind, "dim": "full" if full else dim, "factor": factor if kind == "lokr" else None,
                    "parameters": values, "file_mb_bf16": round(size / 1e6, 2)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    table = rows()
    if not args.markdown:
        print(json.dumps(table, indent=1))
        return
    print("| kind | dim | factor | parameters | file (bf16) |\n|---|---|---|---|---|")
    for r in table:
        print(f"| {r['kind']} | {r['dim']} | {'' if r['factor'] is None else r['factor']} | "
              f"{r['parameters']:,} | {r['file_mb_bf16']} MB |")


if __name__ == "__main__":
    main()
