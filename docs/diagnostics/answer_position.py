"""How much of one attribute question's answer reaches the position that predicts it
(docs/results/archive/history.md, "Where the information is lost").

For 600 `attribute` scenes of the probe (seed 0): the hidden state of the last prompt token
after each decoder layer of a trained run; a linear probe's held-out accuracy (first 400 to
fit, last 200 to test, dimensions standardised) and the share of that state's variance the
answer's classes explain.

    python docs/diagnostics/answer_position.py runs/ee_mllm_tiny/instruct colour
"""

from __future__ import annotations

import argparse

import torch

from eelight.data.families import scene
from eelight.data.image import FastImageTransform
from eelight.data.text import template
from eelight.eval.runner import Asker
from eelight.evaluate.target import load_target


def last_token_states(run: str, kind: str, n: int = 600) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(per layer (n, d) states at the last prompt token, (n,) answer class ids)."""
    t = load_target(run, [])
    model = t.model.eval()
    asker = Asker(model, t.tokenizer, FastImageTransform(t.processor),
                  template(t.template, t.tokenizer, t.system_prompt), t.placement)
    scenes = [scene("attribute", i, 0) for i in range(n)]
    questions = [next(q for q in s.questions if q.kind == kind) for s in scenes]
    enc = asker.encode(questions[0].text)  # one kind: the same prompt for every scene
    caught: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: caught.append(out[0] if isinstance(out, tuple) else out))
             for layer in model.decoder.layers]
    per_batch = []
    with torch.no_grad():
        for start in range(0, n, 100):
            chunk = scenes[start:start + 100]
            caught.clear()
            model(torch.tensor([enc.ids] * len(chunk)), torch.stack([asker.transform(s.image) for s in chunk]),
                  image_offset=torch.tensor([enc.image_offset] * len(chunk)))
            per_batch.append([h[:, -1].clone() for h in caught])
    for hook in hooks:
        hook.remove()
    states = [torch.cat([b[i] for b in per_batch]) for i in range(len(model.decoder.layers))]
    answers = sorted({q.answer for q in questions})
    return states, torch.tensor([answers.index(q.answer) for q in questions])


def linear_accuracy(x: torch.Tensor, y: torch.Tensor, n_fit: int = 400) -> float:
    x = (x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-6)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(x[:n_fit]), y[:n_fit])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (head(x[n_fit:]).argmax(1) == y[n_fit:]).float().mean().item()


def explained_share(x: torch.Tensor, y: torch.Tensor) -> float:
    """Between-class variance / total variance (trace ratio)."""
    means = torch.stack([x[y == c].mean(0) for c in y.unique()])
    return (((means - x.mean(0)) ** 2).sum(1).mean() / x.var(0).sum()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run's stage folder (config.yaml + last.ckpt)")
    parser.add_argument("kind", choices=["colour", "position", "shape", "count"])
    args = parser.parse_args()
    states, y = last_token_states(args.run, args.kind)
    for i, x in enumerate(states):
        print(f"{args.kind} after layer {i}: linear probe {linear_accuracy(x, y):.3f}, "
              f"share of variance {explained_share(x, y):.4f}")


if __name__ == "__main__":
    main()
