"""Shards, loading, bad samples and the img2dataset layout."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from helpers import write_tar
from PIL import Image

from eelight.data.loader import BadDataError, BadSampleCounter, make_pipeline
from eelight.data.probe import build_probe, draw, probe_item
from eelight.data.shards import Sample, write_shards
from eelight.data.tokenizer import build_word_tokenizer
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor

WORDS = ["a", "red", "circle", "blue", "square", "what", "is", "it", "?"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_word_tokenizer(WORDS, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def proc():
    return image_processor(VisionConfig(), 32)


def _image(seed, size=32):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _keys(pipeline):
    return [k for batch in pipeline for k in batch["keys"]]


def test_round_trip_png_pixels_texts_and_conversations(tmp_path, tok, proc):
    conv = [{"from": "human", "value": "<image>\nwhat is it ?"}, {"from": "gpt", "value": "a red circle"}]
    samples = [Sample(f"s{i}", _image(i), caption="a blue square", conversations=conv) for i in range(5)]
    write_shards(samples, tmp_path, "train", max_count=2)
    index = json.loads((tmp_path / "index.json").read_text())["splits"]["train"]
    assert index["samples"] == 5 and [s["count"] for s in index["shards"]] == [2, 2, 1]
    raw = list(wds.DataPipeline(wds.SimpleShardList(sorted(str(p) for p in tmp_path.glob("*.tar"))),
                                wds.tarfile_to_samples(), wds.decode("pil")))
    for got, want in zip(raw, samples, strict=True):
        assert got["__key__"] == want.key
        assert np.array_equal(np.asarray(got["png"]), np.asarray(want.image))  # lossless
        assert got["txt"] == "a blue square" and got["json"]["conversations"] == conv
    batch = next(iter(make_pipeline(f"{tmp_path}/train-{{000000..000002}}.tar", stage="instruct",
                                    tokenizer=tok, processor=proc, batch_size=5)))
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    assert tok.decode(labels) == "a red circle </s>"
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.uint8
    # The image goes where <image> stood: after "<s> USER:" of the probe template.
    assert batch["image_offset"].tolist() == [2] * 5
    assert tok.convert_ids_to_tokens(batch["input_ids"][0, :2].tolist()) == ["<s>", "USER:"]
    first = next(iter(make_pipeline(f"{tmp_path}/train-{{000000..000002}}.tar", stage="instruct", tokenizer=tok,
                                    processor=proc, batch_size=5, image_placement="start")))
    assert first["image_offset"].tolist() == [0] * 5 and torch.equal(first["input_ids"], batch["input_ids"])
    captions = next(iter(make_pipeline(f"{tmp_path}/train-{{000000..000002}}.tar", stage="align", tokenizer=tok,
                                       processor=proc, batch_size=5)))
    assert captions["image_offset"].tolist() == [0] * 5  # a caption has no marker: the image comes first


def _png(seed):
    buf = io.BytesIO()
    _image(seed).save(buf, format="PNG")
    return buf.getvalue()


def _bad_shards(tmp_path):
    good = [(f"g{i}.png", _png(i)) for i in range(6)] + [(f"g{i}.txt", b"a red circle") for i in range(6)]
    members = sorted(good) + [
        ("c0.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg"), ("c0.txt", b"a red circle"),  # corrupt image
        ("m0.png", _png(10)),  # missing .txt
        ("j0.png", _png(11)), ("j0.txt", b"a red circle"), ("j0.json", b"{not json"),  # bad JSON
    ]
    write_tar(tmp_path / "bad-000000.tar", members)
    write_tar(tmp_path / "full.tar", [("t0.png", _png(12)), ("t0.txt", b"a blue square"),
                                       ("t1.png", _png(13)), ("t1.txt", b"a blue square")])
    with tarfile.open(tmp_path / "full.tar") as tar:
        cut = tar.getmember("t1.png").offset_data + 100  # inside the last sample's first member
    (tmp_path / "bad-000001.tar").write_bytes((tmp_path / "full.tar").read_bytes()[:cut])
    return f"{tmp_path}/bad-{{000000..000001}}.tar"


def test_bad_samples_are_skipped_and_counted_by_kind(tmp_path, tok, proc):
    urls = _bad_shards(tmp_path)
    counter = BadSampleCounter()
    keys = _keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=4, counter=counter))
    assert sorted(keys) == [f"g{i}" for i in range(6)] + ["t0"]
    assert dict(counter.counts) == {"image": 1, "text": 1, "json": 1, "tar": 1}


def test_over_the_limit_names_shard_and_key(tmp_path, tok, proc):
    urls = _bad_shards(tmp_path)
    counter = BadSampleCounter(max_bad_samples=1)
    with pytest.raises(BadDataError, match=r"exceed data.max_bad_samples=1.*shard .*bad-000000.tar key (m0|j0)"):
        _keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=4, counter=counter))


def test_bad_fraction_is_bad_over_read_checked_after_min_seen(tmp_path, tok, proc):
    """In order: g0-g5 good, c0 image, m0 text, j0 json (shard 0); t0 good, then the truncated
    t1 (shard 1), reported before t0 is handed on. Read = 10 samples out of tars + 1 truncated
    shard = 11; bad = 4."""
    urls = _bad_shards(tmp_path)

    def run(limit):
        counter = BadSampleCounter(max_bad_fraction=limit, min_seen_for_fraction=9)
        _keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=4, counter=counter))
        return counter

    with pytest.raises(BadDataError, match=r"3 bad samples.*max_bad_fraction=0.3;.*bad-000000.tar key j0"):
        run(0.3)  # at j0: 3 / 9 = 0.333 (c0 and m0 came before 9 were read: not checked)
    with pytest.raises(BadDataError, match=r"4 bad samples.*max_bad_fraction=0.35;.*tar at shard .*bad-000001.tar"):
        run(0.35)  # 3 / 9 passes; the truncated shard makes it 4 / 10 = 0.4 (t0 not yet read)
    counter = run(0.41)
    assert counter.read == 11 and sum(counter.counts.values()) == 4


def test_img2dataset_layout_loads_as_captions(tmp_path, tok, proc):
    buf = io.BytesIO()
    _image(0).save(buf, format="JPEG")
    meta = json.dumps({"url": "http://example.com/0.jpg", "status": "success", "key": "00000",
                       "caption": "a red circle", "width": 32, "height": 32}).encode()
    write_tar(tmp_path / "00000.tar", [("00000.jpg", buf.getvalue()), ("00000.txt", b"a red circle"),
                                        ("00000.json", meta)])
    batch = next(iter(make_pipeline(str(tmp_path / "00000.tar"), stage="align", tokenizer=tok,
                                    processor=proc, batch_size=1)))
    assert tok.decode([t for t in batch["labels"][0].tolist() if t != -100]) == "a red circle </s>"
    counter = BadSampleCounter()  # img2dataset's .json is metadata: no conversation to instruct on
    assert _keys(make_pipeline(str(tmp_path / "00000.tar"), stage="instruct", tokenizer=tok, processor=proc,
                               batch_size=1, counter=counter)) == []
    assert dict(counter.counts) == {"text": 1}


def test_missing_shard_is_named(tmp_path, tok, proc):
    with pytest.raises(FileNotFoundError, match=r"shard .*/nope-000001.tar does not exist"):
        write_tar(tmp_path / "nope-000000.tar", [])
        make_pipeline(f"{tmp_path}/nope-{{000000..000001}}.tar", stage="align", tokenizer=tok, processor=proc)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    build_probe(str(root), n_train=160, n_eval=8, seed=3, image_size=32, shard_size=40)
    return root


def test_probe_shards_hold_the_scenes_and_their_answers(probe):
    import itertools

    from eelight.data.families import scene

    assert probe_item(5, 3) == probe_item(5, 3) and probe_item(5, 3) != probe_item(5, 4)
    item = probe_item(0, 3)
    assert np.array_equal(np.asarray(draw(item, 32)), np.asarray(draw(item, 32)))
    ds = wds.DataPipeline(wds.SimpleShardList([str(probe / "train-000000.tar")]), wds.tarfile_to_samples(),
                          wds.decode("pil"))
    first, second = itertools.islice(ds, 2)
    expected = scene("attribute", 0, 3, 32)  # the families in turn: attribute, small, ...
    assert first["txt"] == expected.caption
    assert np.array_equal(np.asarray(first["png"]), np.asarray(expected.image))
    assert first["json"]["probe"]["family"] == "attribute" and second["json"]["probe"]["family"] == "small"
    assert {q["answer"] for q in first["json"]["probe"]["questions"]} == {q.answer for q in expected.questions}


def test_subset_is_a_prefix_of_a_larger_subset(probe, proc):
    from eelight.data.tokenizer import load_tokenizer

    tok = load_tokenizer(probe / "tokenizer")
    urls = f"{probe}/train-{{000000..000003}}.tar"
    small = set(_keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, subset=30, shuffle=50)))
    large = set(_keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, subset=60, shuffle=50,
                                    seed=9)))
    assert len(small) == 30 and len(large) == 60 and small < large
    with pytest.raises(ValueError, match="data.subset=500 but the shards hold 160"):
        make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, subset=500)


def test_pipe_urls_and_seeded_order(probe, proc):
    from eelight.data.tokenizer import load_tokenizer

    tok = load_tokenizer(probe / "tokenizer")
    plain = _keys(make_pipeline(f"{probe}/train-000000.tar", stage="align", tokenizer=tok, processor=proc))
    piped = _keys(make_pipeline(f"pipe:cat {probe}/train-000000.tar", stage="align", tokenizer=tok, processor=proc))
    assert piped == plain and len(plain) == 40
    urls = f"{probe}/train-{{000000..000003}}.tar"

    def order(seed):
        return _keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, shuffle=30, seed=seed))

    assert order(1) == order(1) and order(1) != order(2) and sorted(order(1)) == sorted(order(2))


def test_all_answers_truncated_away_is_counted_not_trained_on(probe, proc):
    from eelight.data.tokenizer import load_tokenizer

    tok = load_tokenizer(probe / "tokenizer")
    counter = BadSampleCounter()
    keys = _keys(make_pipeline(f"{probe}/train-000000.tar", stage="instruct", tokenizer=tok, processor=proc,
                               max_length=4, counter=counter))
    assert keys == [] and dict(counter.counts) == {"no_answer": 40}


def _broken(tmp_path, kind):
    path = tmp_path / f"{kind}-000000.tar{'.gz' if kind == 'gzip' else ''}"
    if kind in ("random", "gzip"):  # gzip: a .tar.gz that is not gzip at all
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()  # a directory named like a shard
    return str(path)


@pytest.mark.parametrize("kind", ["random", "empty", "directory", "gzip"])
@pytest.mark.parametrize("workers", [0, 2])
def test_shards_that_are_not_tars_stop_the_reader(tmp_path, tok, proc, kind, workers):
    from eelight.data.loader import make_loader

    url = _broken(tmp_path, kind)
    with pytest.raises(BadDataError, match=rf"{kind}-000000.tar"):
        pipeline = make_pipeline(url, stage="align", tokenizer=tok, processor=proc, batch_size=2)
        for _ in make_loader(pipeline, num_workers=workers):
            pass


def test_resampled_reader_of_broken_shards_stops(tmp_path, tok, proc):
    from eelight.data.loader import make_loader

    urls = [_broken(tmp_path, "random"), _broken(tmp_path, "empty")]
    pipeline = make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=2, resampled=True)
    with pytest.raises(BadDataError, match=r"none of the 2 shard\(s\) can be read as a tar"):
        next(iter(make_loader(pipeline, epoch_batches=10)))


def test_a_pass_without_a_usable_sample_stops(tmp_path, tok, proc):
    from eelight.data.loader import make_loader

    write_tar(tmp_path / "nocap-000000.tar", [(f"x{i}.png", _png(i)) for i in range(3)])  # images, no text
    pipeline = make_pipeline(str(tmp_path / "nocap-000000.tar"), stage="align", tokenizer=tok, processor=proc,
                             batch_size=2)
    with pytest.raises(BadDataError, match=r"gave no usable sample \(bad in this process: \{'text': 3\}\)"):
        list(make_loader(pipeline))


def test_bad_samples_count_once_over_several_passes(tmp_path, tok, proc):
    urls = _bad_shards(tmp_path)
    counter = BadSampleCounter()
    pipeline = make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=4, counter=counter)
    for _ in range(3):
        _keys(pipeline)
    assert dict(counter.counts) == {"image": 1, "text": 1, "json": 1, "tar": 1}  # distinct, not 3x
    assert counter.bad_reads == 9 and counter.seen == 30  # the fraction's reads: per pass



def test_a_subset_reads_each_shard_up_to_its_last_sample_and_decodes_each_sample_once(probe, proc, tmp_path,
                                                                                      monkeypatch):
    """Passes over a subset give the batches webdataset's own stages give (every shard read
    whole, then `select`), pass after pass; a shard's tail past the subset is never read, and
    a sample's image is decoded and tokenized on its first pass only."""
    import random
    import shutil

    import eelight.data.loader as loader
    from eelight.data.tokenizer import load_tokenizer

    tok = load_tokenizer(probe / "tokenizer")
    shutil.copytree(probe, tmp_path / "p")
    shards = [str(tmp_path / "p" / f"train-00000{i}.tar") for i in range(4)]
    pattern = f"{tmp_path}/p/train-{{000000..000003}}.tar"

    def keys_in(shard):
        return [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples())]

    keep = set((keys_in(shards[0]) + keys_in(shards[1]))[:70])  # 40 + the second shard's first 30
    tpl = loader.template("probe", tok, None)
    transform = loader.image_transform(proc)
    real_make = loader.make_example
    reference = wds.DataPipeline(
        wds.SimpleShardList(shards[:2]), wds.split_by_node, wds.split_by_worker, wds.detshuffle(2, seed=4),
        wds.tarfile_to_samples(), wds.select(lambda s: s["__key__"] in keep),
        wds.shuffle(50, initial=50, rng=random.Random(4)), wds.decode("pil"),
        wds.map(lambda s: real_make(s, "instruct", tok, tpl, transform, 64)),
        wds.batched(8, collation_fn=lambda b: loader.collate(b, tok.pad_token_id), partial=True))
    made: list[str] = []
    monkeypatch.setattr(loader, "make_example", lambda s, *a, **k: made.append(s["__key__"]) or real_make(s, *a, **k))
    ours = make_pipeline(pattern, stage="instruct", tokenizer=tok, processor=proc, batch_size=8, subset=70,
                         shuffle=50, seed=4)
    for n in range(3):
        batches = 0
        for got, want in zip(ours, reference, strict=True):
            batches += 1
            assert got["keys"] == want["keys"]
            for name in ("input_ids", "labels", "pixel_values", "image_offset"):
                assert torch.equal(got[name], want[name]), name
        assert batches == 9 and sorted(made) == sorted(keep), f"pass {n}: decoded again"
    # Cut the second shard inside its 36th sample: the subset (its first 30) never reaches the cut.
    with tarfile.open(shards[1]) as tar:
        cut = tar.getmember(f"{keys_in(shards[1])[35]}.png").offset_data + 10
    Path(shards[1]).write_bytes(Path(shards[1]).read_bytes()[:cut])
    counter = BadSampleCounter()
    assert len(_keys(make_pipeline(pattern, stage="instruct", tokenizer=tok, processor=proc, subset=70,
                                   counter=counter))) == 70
    assert dict(counter.counts) == {}
    whole = BadSampleCounter()
    _keys(make_pipeline(shards[:2], stage="instruct", tokenizer=tok, processor=proc, counter=whole))
    assert whole.counts["tar"] == 1  # read whole, the cut is seen


def test_samples_cut_by_max_length_are_counted_and_answerless_ones_skipped(tmp_path, tok, proc):
    """Captions of 2 to 7 words in a 6-token window: each batch counts the samples whose tokens
    did not fit (counted by hand from each caption's full length); a window that leaves no
    answer token skips the sample as `no_answer`."""
    captions = [" ".join(["red"] * n) for n in range(2, 8)]
    samples = [Sample(f"c{i}", _image(i), caption=c) for i, c in enumerate(captions)]
    write_shards(samples, tmp_path, "train", max_count=10)
    urls = f"{tmp_path}/train-000000.tar"
    full = next(iter(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=6, max_length=64)))
    lengths = [int((row != tok.pad_token_id).sum()) for row in full["input_ids"]]
    assert full["cut"] == 0
    batch = next(iter(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=6, max_length=6)))
    assert batch["cut"] == sum(n > 6 for n in lengths) > 0 and batch["input_ids"].shape[1] == 6
    counter = BadSampleCounter()
    _keys(make_pipeline(urls, stage="align", tokenizer=tok, processor=proc, batch_size=6, max_length=1,
                        counter=counter))
    assert counter.counts["no_answer"] == len(captions)
