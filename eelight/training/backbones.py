"""Tiny *pretrained* backbones for CPU runs (docs/DESIGN.md §2).

A frozen random LLM has nothing to align to, and weight reuse means nothing with
random Wv, Wo. So, as the paper starts from CLIP and Vicuna, tiny runs start from:

- a small Llama LM (`transformers.LlamaForCausalLM`) trained on the probe's text
  (captions and rendered conversations), and
- a small CLIP (`transformers.CLIPModel`) trained contrastively on the probe's
  image-caption pairs,

both saved with `save_pretrained` as genuine HF folders and loaded back by runs
through the production loader (`llm.path`, `vision.path`). The folder is reused
while its `backbones.json` matches the settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from eelight.data.text import caption_turns, encode, template


@dataclass
class BackboneConfig:
    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    heads: int = 4
    lm_steps: int = 300
    clip_steps: int = 1200  # 300 left the tower undertrained (contrastive loss 1.02 vs 0.47; probe reading 0.10-0.17 vs 0.20-0.24 in the study)
    batch_size: int = 64
    lr: float = 2e-3
    max_samples: int = 4000  # training samples read from the probe
    seed: int = 0


def _read_probe(probe_dir: Path, n: int, processor):
    """(pixel_values (n, 3, S, S), captions, conversations) from the probe's train shards."""
    import webdataset as wds

    from eelight.data.loader import expand_urls
    from eelight.data.shards import read_manifest

    split = read_manifest(probe_dir)["splits"]["train"]
    urls = expand_urls(str(probe_dir / split["pattern"]))
    images, captions, convs = [], [], []
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode("pil")):
        images.append(sample["png"].convert("RGB"))
        captions.append(sample["txt"])
        convs.append(sample["json"]["conversations"])
        if len(images) >= n:
            break
    pixels = torch.cat([processor(images=images[i:i + 256], return_tensors="pt")["pixel_values"]
                        for i in range(0, len(images), 256)])
    return pixels, captions, convs


def _pad(seqs: list[list[int]], pad_id: int, extra: int = 0) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs)) + extra), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def _fit(model, batches, steps: int, lr: float, name: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(steps):
        loss = model(**batches(step)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"[backbones] {name} step {step + 1}/{steps} loss {loss.item():.3f} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
    return loss.item()


def pretrain_llm(texts: list[list[int]], vocab: int, tok, cfg: BackboneConfig, out: Path) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=cfg.width, intermediate_size=cfg.width * 8 // 3, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=max(1, cfg.heads // 2), max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch(step: int) -> dict:
        idx = torch.randint(len(texts), (cfg.batch_size,), generator=gen).tolist()
        ids = _pad([texts[i] for i in idx], tok.pad_token_id)
        return {"input_ids": ids, "labels": ids.masked_fill(ids == tok.pad_token_id, -100)}

    loss = _fit(model, batch, cfg.lm_steps, cfg.lr, "LM")
    model.save_pretrained(out)
    return loss


def pretrain_clip(pixels: torch.Tensor, captions: list[list[int]], vocab: int, pad_id: int,
                  cfg: BackboneConfig, out: Path, processor) -> float:
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=1, eos_token_id=pad_id)  # pooled at the first pad = end of caption
    vision = dict(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.width,
                  intermediate_size=cfg.width * 2, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def batch(step: int) -> dict:
        idx = torch.randint(len(captions), (cfg.batch_size,), generator=gen)
        return {"input_ids": _pad([captions[i] for i in idx.tolist()], pad_id, extra=1),
                "pixel_values": pixels[idx], "return_loss": True}

    loss = _fit(model, batch, cfg.clip_steps, cfg.lr, "CLIP")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return loss


def _digest(probe_dir: Path) -> str:
    """Fingerprint of the probe the backbones learn from: a rebuilt probe retrains them."""
    import hashlib

    h = hashlib.sha256()
    for name in ("probe.json", "index.json", "tokenizer/tokenizer.json"):  # probe.json: the generator version
        path = probe_dir / name
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:16]


def build_backbones(probe_dir: str | Path, out_dir: str | Path, cfg: BackboneConfig | None = None) -> dict:
    """Pretrain (or reuse) the tiny LM and CLIP; returns their folders."""
    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.config import VisionConfig
    from eelight.models.vision import image_processor

    cfg = cfg or BackboneConfig()
    probe_dir, out = Path(probe_dir), Path(out_dir)
    stamp = out / "backbones.json"
    settings = {"config": asdict(cfg), "probe": str(probe_dir.resolve()), "probe_files": _digest(probe_dir)}
    paths = {"llm": str(out / "llm"), "vision": str(out / "vision"), "tokenizer": str(out / "llm")}
    if stamp.exists() and json.loads(stamp.read_text()).get("settings") == settings:
        print(f"[backbones] reusing {out}", flush=True)
        return paths
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(probe_dir / "tokenizer")
    processor = image_processor(VisionConfig(kind="clip"), cfg.image_size)
    pixels, captions, convs = _read_probe(probe_dir, cfg.max_samples, processor)
    texts = [encode(caption_turns(c), template("plain"), tok, 128)[0] for c in captions]
    texts += [encode(c, template("probe"), tok, 128)[0] for c in convs]
    lm_loss = pretrain_llm(texts, len(tok), tok, cfg, out / "llm")
    tok.save_pretrained(out / "llm")
    caption_ids = [tok.encode(c, add_special_tokens=False) for c in captions]
    clip_loss = pretrain_clip(pixels, caption_ids, len(tok), tok.pad_token_id, cfg, out / "vision", processor)
    stamp.write_text(json.dumps({"settings": settings, "lm_loss": lm_loss, "clip_loss": clip_loss}, indent=1))
    return paths
