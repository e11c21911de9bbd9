"""Builds ViT-B/16 (random weights, no download) with a token-reduction plan and prints its per-layer token counts,
FLOPs and ideal speed-up against the same model without reduction.

    python examples/plan_summary.py --token-reduction '{"method": "tome", "r": 13}'
"""

import argparse
import sys

from hf_tokenprune.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-reduction", default='{"method": "evit", "layers": [3, 6, 9], "keep_rate": 0.7}')
    parser.add_argument("--arch", default="vit-base-patch16-224")
    args = parser.parse_args(argv)
    return cli_main(["plan", "--arch", args.arch, "--token-reduction", args.token_reduction])


if __name__ == "__main__":
    sys.exit(main())
