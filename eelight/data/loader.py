"""The WebDataset pipeline for both stages, in the standard stage order (open_flamingo):

    shard list -> split by node -> split by worker -> shuffle shards -> read tar
    -> subset -> shuffle samples -> decode -> tokenize/preprocess -> batch
    (`make_loader`: DataLoader workers -> fixed epoch length per rank)

Bad samples (unreadable image, missing text, bad JSON, truncated tar, no answer
left after truncation) are skipped and counted by kind; past `max_bad_samples`
or `max_bad_fraction` the skip turns into an error naming the shard and key.
The counts are of distinct samples (a bad sample skipped on every pass over the
data counts once; a broken shard counts once); the fraction compares bad reads
with all reads, the same rate on every pass. A reader whose every shard is
unreadable, or a pass that yields no batch at all, stops with an error naming
the shards instead of starting the next pass forever.
"""

from __future__ import annotations

import random
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eelight.data.image import image_transform
from eelight.data.shards import ManifestError, read_manifest
from eelight.data.text import IGNORE_INDEX, NoAnswerLeft, caption_turns, encode_counted, template
from eelight.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
BAD_KINDS = ("image", "text", "json", "tar", "no_answer")


class BadSample(ValueError):
    def __init__(self, kind: str, message: str, sample: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.key = (sample or {}).get("__key__")
        self.url = (sample or {}).get("__url__")


class BadDataError(UserError, RuntimeError):
    """Too many bad samples: names the shard and key of the one over the limit."""


@dataclass
class BadSampleCounter:
    """A webdataset `handler`: counts each skipped sample by kind; raises past the limits.
    The fraction is bad / read, where read counts every sample taken out of a tar (`saw`)
    plus each truncated shard; it is checked once `min_seen_for_fraction` were read, so the
    first bad sample of a run is not already 100%."""

    max_bad_samples: int | None = None
    max_bad_fraction: float | None = None
    min_seen_for_fraction: int = 100

    def __post_init__(self) -> None:
        self.counts: Counter[str] = Counter()  # distinct bad samples (shards, for `tar`) by kind
        self.seen = 0
        self.bad_reads = 0  # every skip, a sample skipped on each of 3 passes 3 times
        self.urls: list[str] = []  # set by make_pipeline: names the shard of a tar error
        self._bad_shards: set[str] = set()
        self._bad_keys: set[tuple[str | None, str | None, str]] = set()

    def saw(self, sample: dict[str, Any]) -> dict[str, Any]:
        """A pipeline stage before decoding: one more sample read."""
        self.seen += 1
        return sample

    @property
    def read(self) -> int:
        return self.seen + self.counts["tar"]

    def kind_of(self, exn: Exception) -> str:
        from webdataset.autodecode import DecodingError

        if isinstance(exn, BadSample):
            return exn.kind
        if isinstance(exn, DecodingError):
            return "json" if exn.k == "json" else "image" if exn.k in IMAGE_EXTS else "text"
        if isinstance(exn, (tarfile.TarError, EOFError, OSError)):
            return "tar"
        raise exn  # anything else is a bug, not bad data: never count it as skipped

    def shard_of(self, exn: Exception) -> str | None:
        text = repr(exn)
        return getattr(exn, "url", None) or next((u for u in self.urls if u in text), None)

    def __call__(self, exn: Exception) -> bool:
        kind = self.kind_of(exn)
        if kind == "tar":  # the tar reader and the opener both report a truncated shard: count it once
            shard = self.shard_of(exn) or repr(exn)
            if shard in self._bad_shards:
                return True
            self._bad_shards.add(shard)
            if self.urls and self._bad_shards >= set(self.urls):
                raise BadDataError(
                    f"none of the {len(self.urls)} shard(s) can be read as a tar file ({_names(self.urls)}); "
                    f"last: {_first_line(exn)}. Point the shard pattern at webdataset .tar shards") from exn
        else:
            self.bad_reads += 1
            ident = (getattr(exn, "url", None), getattr(exn, "key", None), kind)
            if ident[1] is not None and ident in self._bad_keys:  # the same sample on a later pass
                return True
            self._bad_keys.add(ident)
        self.counts[kind] += 1
        total = sum(self.counts.values())
        bad_reads = self.bad_reads + self.counts["tar"]
        over_count = self.max_bad_samples is not None and total > self.max_bad_samples
        over_fraction = (self.max_bad_fraction is not None and self.read >= self.min_seen_for_fraction
                         and bad_reads / self.read > self.max_bad_fraction)
        if over_count or over_fraction:
            where = f"shard {self.shard_of(exn)} key {getattr(exn, 'key', None)}"
            raise BadDataError(
                f"{total} bad samples ({dict(self.counts)}) exceed data.max_bad_samples="
                f"{self.max_bad_samples} / data.max_bad_fraction={self.max_bad_fraction}; last: {kind} "
                f"at {where}: {exn!r}"
            ) from exn
        return True


def _names(urls: list[str], most: int = 3) -> str:
    shown = ", ".join(urls[:most])
    return shown + (f" and {len(urls) - most} more" if len(urls) > most else "")


def _first_line(exn: Exception) -> str:
    if exn.args and isinstance(exn.args[0], str):  # webdataset: (message, stream, url)
        return exn.args[0].strip().splitlines()[0] if exn.args[0].strip() else type(exn).__name__
    return (str(exn).strip().splitlines() or [type(exn).__name__])[0]


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace-expanded shard list; local files must exist (a missing one is named)."""
    import braceexpand

    out = [u for pattern in ([urls] if isinstance(urls, str) else urls) for u in braceexpand.braceexpand(pattern)]
    for url in out:
        local = not url.startswith(("pipe:", "http://", "https://", "gs://", "s3://"))
        if local and Path(url.removeprefix("file:")).is_dir():
            raise BadDataError(f"shard {url} is a directory, not a .tar file; check data.train_shards / "
                               "data.val_shards")
        if local and not Path(url.removeprefix("file:")).is_file():
            raise FileNotFoundError(f"shard {url} does not exist; check data.train_shards / data.val_shards")
    return out


def _manifest_keys(folder: str) -> dict[str, list[str]]:
    """Shard path -> its sample keys, from the folder's index.json (a broken file: one line)."""
    path = Path(folder) / "index.json"
    try:
        out = {str(Path(folder) / shard["path"]): [str(k) for k in shard["keys"]]
               for split in read_manifest(folder)["splits"].values() for shard in split["shards"]}
    except (KeyError, TypeError, AttributeError) as exn:
        raise ManifestError(f"{path} does not list each shard's `path` and `keys` ({type(exn).__name__}: {exn}); "
                            "rewrite it with python data_pipelines/index_shards.py --shards '<pattern>'") from exn
    return out


def subset_keys(urls: list[str], n: int) -> tuple[set[str], dict[str, int]]:
    """The first n sample keys in shard order, from the manifest beside the shards (the
    n-sample subset is a prefix of the 2n-sample one, whatever the ranks and workers), and
    how many of them each shard holds, in shard order: the shards that hold none are not read,
    and a shard is read only up to its last subset sample (`_subset_samples`)."""
    by_name: dict[str, list[str]] = {}
    for folder in {str(Path(u).parent) for u in urls}:
        by_name.update(_manifest_keys(folder))
    keys: list[str] = []
    holding: dict[str, int] = {}
    for url in urls:
        if url not in by_name:
            raise ManifestError(f"data.subset={n} needs the keys of shard {url}, which index.json beside it does "
                             f"not list; write them with python data_pipelines/index_shards.py --shards '<pattern>'")
        if len(keys) < n and by_name[url]:
            holding[url] = min(len(by_name[url]), n - len(keys))
        keys += by_name[url]
    if len(keys) < n:
        raise ManifestError(f"data.subset={n} but the shards hold {len(keys)} samples (by the index.json beside "
                            "them); use a smaller data.subset")
    return set(keys[:n]), holding


def _subset_samples(keep: set[str], wanted: dict[str, int], handler):
    """`tarfile_to_samples` for a subset: each shard's samples whose key is in `keep`, and the
    shard is closed after its last one (a 100-sample subset reads 100 samples a pass, not the
    1,000 of its shard). The same samples in the same order as reading every shard whole."""
    from webdataset.tariterators import tarfile_samples

    def stage(shards):
        for shard in shards:
            found, samples = 0, tarfile_samples(iter([shard]), handler=handler)
            for sample in samples:
                if sample["__key__"] in keep:
                    found += 1
                    yield sample
                    if found == wanted.get(shard["url"], 0):
                        break
            samples.close()

    return stage


CACHE_BYTES = 512 * 2**20  # the most a subset's decoded examples may hold in memory (per loader process)


def _examples(make, handler, cache: dict | None):
    """decode ("pil") -> `make` (make_example), bad samples passed to `handler` as webdataset's
    own stages do. With `cache` (a subset, read again on every pass), a sample's example is kept
    from its first pass, up to CACHE_BYTES: the next passes skip the image decode and the
    tokenizer, and get the same tensors they would have built."""
    from webdataset.autodecode import Decoder, imagehandler

    decode = Decoder([imagehandler("pil")])
    held = [0]

    def stage(samples):
        for sample in samples:
            ident = (sample.get("__url__"), sample.get("__key__"))
            if cache is not None and ident in cache:
                yield cache[ident]
                continue
            try:
                example = make(decode(sample))
            except Exception as exn:  # noqa: BLE001 - the handler counts bad data and re-raises bugs
                if handler(exn):
                    continue
                break
            size = example["pixels_uint8"].nbytes + 16 * len(example["input_ids"])
            if cache is not None and held[0] + size <= CACHE_BYTES:
                cache[ident] = example
                held[0] += size
            yield example

    return stage


def make_example(sample: dict[str, Any], stage: str, tokenizer, tpl, processor, max_length: int,
                 placement: str = "marker") -> dict[str, Any]:
    """A decoded webdataset sample -> tensors. Raises BadSample for what must be skipped.
    `processor` is an image transform (`image_transform`); images stay uint8 until `collate`. `placement`:
    the visual tokens where the `<image>` marker stands, or first (`text.encode`)."""
    image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if image is None:
        raise BadSample("image", f"sample {sample.get('__key__')} has no image", sample)
    meta = sample.get("json") or {}
    if not isinstance(meta, dict):
        raise BadSample("json", f"sample {sample.get('__key__')}: .json is not an object", sample)
    if stage == "align":
        caption = sample.get("txt") or meta.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise BadSample("text", f"sample {sample.get('__key__')} has no caption (.txt)", sample)
        try:
            enc, cut = encode_counted(caption_turns(caption), template("plain"), tokenizer, max_length, placement)
        except NoAnswerLeft as exn:
            raise BadSample("no_answer", f"sample {sample.get('__key__')}: {exn}", sample) from exn
    else:
        turns = meta.get("conversations")  # img2dataset's .json holds only metadata: no turns
        if not isinstance(turns, list) or not turns:
            raise BadSample("text", f"sample {sample.get('__key__')} has no conversation in .json", sample)
        try:
            enc, cut = encode_counted(turns, tpl, tokenizer, max_length, placement)
        except NoAnswerLeft as exn:
            raise BadSample("no_answer", f"sample {sample.get('__key__')}: {exn}", sample) from exn
        except ValueError as exn:  # malformed turns
            raise BadSample("json", f"sample {sample.get('__key__')}: {exn}", sample) from exn
    return {"key": sample["__key__"], "pixels_uint8": processor.to_uint8(image), "input_ids": enc.ids,
            "labels": enc.labels, "image_offset": enc.image_offset, "question_end": enc.question_end, "cut": cut}


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad ids with pad_id and labels with -100; stack the uint8 images (the vision
    tower normalises them on the model's device: 4x less memory to move than float32)
    and the image offsets (text tokens before each sample's visual block)."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
    return {"keys": [e["key"] for e in examples], "input_ids": ids, "labels": labels,
            "pixel_values": torch.stack([e["pixels_uint8"] for e in examples]),
            "image_offset": torch.tensor([e["image_offset"] for e in examples], dtype=torch.long),
            "question_end": torch.tensor([e.get("question_end", 0) for e in examples], dtype=torch.long),
            "cut": sum(bool(e.get("cut")) for e in examples)}  # samples whose text data.max_length cut


def _with_counts(batch: dict[str, Any], counter: BadSampleCounter) -> dict[str, Any]:
    """Attach this worker's cumulative bad-sample counts: DataLoader workers are separate
    processes, so the counts travel with the batches (`BadCountTracker` sums them)."""
    info = torch.utils.data.get_worker_info()
    batch["bad_counts"] = (0 if info is None else info.id, dict(counter.counts))
    return batch


class BadCountTracker:
    """Main-process view of the bad-sample counts of every DataLoader worker."""

    def __init__(self) -> None:
        self.by_worker: dict[int, dict[str, int]] = {}

    def update(self, batch: dict[str, Any]) -> None:
        worker, counts = batch["bad_counts"]
        self.by_worker[worker] = counts

    @property
    def counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for counts in self.by_worker.values():
            total.update(counts)
        return dict(total)


def _all_shards(src):
    """Node splitter that gives every rank all shards (evaluation on the same set)."""
    yield from src


def make_pipeline(
    urls: str | list[str], *, stage: str, tokenizer, processor, template_name: str = "probe",
    system_prompt: str | None = None,
    image_placement: str = "marker", batch_size: int = 8, max_length: int = 64, shuffle: int = 0, seed: int = 0,
    subset: int | None = None, resampled: bool = False,
    counter: BadSampleCounter | None = None, max_batches: int | None = None, split_by_node: bool = True,
):
    """The iterable dataset of collated batches (see the module docstring for the stages)."""
    import webdataset as wds

    shard_urls = expand_urls(urls)
    tpl = template(template_name, tokenizer, system_prompt)
    keep: set[str] | None = None
    if subset is not None:  # read only the shards that hold the subset (a 100-sample subset: one)
        keep, wanted = subset_keys(shard_urls, subset)
        shard_urls = list(wanted)
    transform = image_transform(processor)
    counter = counter or BadSampleCounter()
    counter.urls = shard_urls
    stages: list[Any] = []
    if resampled:  # every rank draws shards at random forever: equal epochs on uneven shard counts
        stages.append(wds.ResampledShards(shard_urls, seed=seed, deterministic=True))
    else:
        stages += [wds.SimpleShardList(shard_urls), wds.split_by_node if split_by_node else _all_shards,
                   wds.split_by_worker]
        if shuffle:
            stages.append(wds.detshuffle(len(shard_urls), seed=seed))
    if keep is not None:
        stages.append(_subset_samples(keep, wanted, counter))
    else:
        stages.append(wds.tarfile_to_samples(handler=counter))
    if shuffle:
        stages.append(wds.shuffle(shuffle, initial=min(shuffle, 100), rng=random.Random(seed)))
    stages += [
        wds.map(counter.saw),
        _examples(lambda s: make_example(s, stage, tokenizer, tpl, transform, max_length, image_placement),
                  counter, {} if keep is not None else None),
        wds.batched(batch_size, collation_fn=lambda b: _with_counts(collate(b, tokenizer.pad_token_id), counter),
                    partial=True),
    ]
    if max_batches is not None:
        stages.append(wds.slice(max_batches))
    pipeline = wds.DataPipeline(*stages)
    pipeline.bad_counter = counter
    return pipeline


class NonEmptyLoader:
    """Iterates a loader; a pass that yields no batch at all (every sample or shard bad) is an
    error naming the shards, not an empty epoch after which training starts the next one."""

    def __init__(self, loader, counter: BadSampleCounter) -> None:
        self.loader, self.counter = loader, counter

    def __iter__(self):
        n = 0
        for batch in self.loader:
            n += 1
            yield batch
        urls = self.counter.urls
        if n == 0 and urls:
            raise BadDataError(f"a whole pass over {len(urls)} shard(s) ({_names(urls)}) gave no usable "
                               f"sample (bad in this process: {dict(self.counter.counts) or 'none counted'}); "
                               "check the shard pattern and the data (python data_pipelines/index_shards.py "
                               "lists what each shard holds)")


def make_loader(pipeline, num_workers: int = 0, epoch_batches: int | None = None):
    """A WebLoader over collated batches. `epoch_batches` fixes the epoch length per rank
    (counted in the main process, across its workers), so ranks stay in step."""
    import webdataset as wds

    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                           persistent_workers=num_workers > 0)
    loader = loader.with_epoch(epoch_batches) if epoch_batches else loader
    return NonEmptyLoader(loader, pipeline.bad_counter)
