"""Write MODEL_CARD.md at the top of the project: the card the recipe wrote into the package
(src/realface/weights/default/MODEL_CARD.md, numbers included), then README.md's sections on what the shipped model
can and cannot do (known failure modes, the CNN ablation it came from) and on fairness, measured on it.

    python benchmarks/project_card.py          # rewrites MODEL_CARD.md
    python benchmarks/project_card.py --check  # exit 1 when MODEL_CARD.md is not what it would write

Run it after shipping new weights or editing those README sections.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = [  # (first heading, the heading that ends the section) in README.md
    ("## What the shipped model can and cannot do", "### What the ablation decided for the ViT-tiny default"),
    ("## Fairness", "## Layout"),
]


def project_card(repo: Path = REPO) -> str:
    card = (repo / "src" / "realface" / "weights" / "default" / "MODEL_CARD.md").read_text()
    readme = (repo / "README.md").read_text()
    parts = [readme[readme.index(start) : readme.index(end)].rstrip("\n") for start, end in SECTIONS]
    return card.rstrip("\n") + "\n\n\n" + "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when it differs")
    args = parser.parse_args()
    text, path = project_card(), REPO / "MODEL_CARD.md"
    if args.check:
        sys.exit(0 if path.read_text() == text else 1)
    path.write_text(text)


if __name__ == "__main__":
    main()
