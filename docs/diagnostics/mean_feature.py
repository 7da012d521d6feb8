"""How much of a probe family's answer the *mean* of the vision tower's patch features carries
(docs/results/archive/history.md, "Probe version 8"): a linear probe's held-out accuracy on that mean (and, for
comparison, on all patch features side by side), for 1,200 scenes of a family (900 to fit, 300
to test). What the mean shows is what this study's 280-step trials learn; what needs a few
tokens picked out by position is not.

    python docs/diagnostics/mean_feature.py .cache/backbones/vision relation
    python docs/diagnostics/mean_feature.py .cache/backbones/vision attribute position
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from answer_position import linear_accuracy  # noqa: E402

from eelight.data.families import scene  # noqa: E402


def patch_features(tower_dir: str, images: list) -> torch.Tensor:
    """(n, patches, d) hidden states of the penultimate layer, CLS dropped (what the runs read)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(tower_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(tower_dir)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 200):
            pixels = processor(images=images[start:start + 200], return_tensors="pt")["pixel_values"]
            out.append(tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tower", help="the vision tower's HF folder (.cache/backbones/vision)")
    parser.add_argument("family")
    parser.add_argument("kind", nargs="?", help="for attribute: shape, colour, position or count")
    args = parser.parse_args()
    scenes = [scene(args.family, i, 0) for i in range(1200)]
    answers = [next(q for q in s.questions if args.kind in (None, q.kind)).answer for s in scenes]
    classes = sorted(set(answers))
    y = torch.tensor([classes.index(a) for a in answers])
    h = patch_features(args.tower, [s.image for s in scenes])
    print(f"{args.family} {args.kind or ''} ({len(classes)} answers): mean of the patch features "
          f"{linear_accuracy(h.mean(1), y, 900):.3f}, all patch features {linear_accuracy(h.flatten(1), y, 900):.3f}")


if __name__ == "__main__":
    main()
