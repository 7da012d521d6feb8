"""Converters -> shards -> loader round trips, with skipped entries counted."""

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds
from helpers import write_tar
from PIL import Image

from eelight.data.loader import make_pipeline
from eelight.data.tokenizer import build_word_tokenizer
from eelight.models.config import VisionConfig
from eelight.models.vision import image_processor

ROOT = __import__("pathlib").Path(__file__).parents[1]


def _img(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def _read(folder):
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode("pil")))


def _run(script, *args):
    out = subprocess.run([sys.executable, str(ROOT / "data_pipelines" / script), *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_llava_json_round_trip(tmp_path):
    (tmp_path / "imgs" / "coco").mkdir(parents=True)
    records = []
    for i in range(5):
        _img(i).save(tmp_path / "imgs" / "coco" / f"{i}.png")
        convs = [{"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer {i}."},
                 {"from": "human", "value": "More?"}, {"from": "gpt", "value": "Yes."}]
        records.append({"id": f"{i:012d}.png", "image": f"coco/{i}.png", "conversations": convs})
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "hi"},
                                                         {"from": "gpt", "value": "hello"}]})
    records.append({"id": "gone", "image": "coco/missing.png", "conversations": records[0]["conversations"]})
    (tmp_path / "imgs" / "coco" / "broken.png").write_bytes(b"not a png")
    records.append({"id": "broken", "image": "coco/broken.png", "conversations": records[0]["conversations"]})
    _img(9).resize((256, 256)).save(tmp_path / "whole.jpg", quality=95)
    whole = (tmp_path / "whole.jpg").read_bytes()
    cut = tmp_path / "imgs" / "coco" / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    with Image.open(cut) as im:
        im.verify()  # the header is intact: verify() alone lets it through
    records.append({"id": "cut", "image": "coco/cut.jpg", "conversations": records[0]["conversations"]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    summary = _run("llava_json.py", "--json", str(tmp_path / "data.json"), "--images", str(tmp_path / "imgs"),
                   "--out", str(tmp_path / "shards"), "--shard-size", "2", "--report", str(tmp_path / "skipped.jsonl"))
    assert summary["samples"] == 5 and summary["shards"] == 3
    assert summary["bad"] == {"no_image": 1, "missing_image": 1, "unreadable_image": 2}
    skipped = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert [(e["index"], e["id"], e["reason"]) for e in skipped] == [
        (5, "text-only", "no_image"), (6, "gone", "missing_image"), (7, "broken", "unreadable_image"),
        (8, "cut", "unreadable_image")]
    assert "truncated" in skipped[-1]["detail"] and "cut.jpg" in skipped[-1]["detail"]
    got = _read(tmp_path / "shards")
    for i, sample in enumerate(got):
        assert np.array_equal(np.asarray(sample["png"]), np.asarray(_img(i)))
        assert sample["json"]["conversations"] == records[i]["conversations"]
        assert "." not in sample["__key__"]


def test_folder_jsonl_round_trip_through_the_loader(tmp_path):
    (tmp_path / "photos").mkdir()
    lines = []
    for i in range(4):
        _img(10 + i).save(tmp_path / "photos" / f"p{i}.png")
        lines.append(json.dumps({"file": f"p{i}.png", "caption": "a red circle", "source": "test"}))
    lines += ["{broken json", json.dumps({"file": "p9.png", "caption": "gone"})]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    summary = _run("folder_jsonl.py", "--images", str(tmp_path / "photos"), "--captions",
                   str(tmp_path / "captions.jsonl"), "--out", str(tmp_path / "shards"))
    assert summary["samples"] == 4 and summary["bad"] == {"bad_record": 1, "missing_image": 1}
    got = _read(tmp_path / "shards")
    assert [np.array_equal(np.asarray(s["png"]), np.asarray(_img(10 + i))) for i, s in enumerate(got)] == [True] * 4
    assert all(s["txt"] == "a red circle" and s["json"]["source"] == "test" for s in got)
    tok = build_word_tokenizer(["a", "red", "circle"], tmp_path / "tok")
    batch = next(iter(make_pipeline(f"{tmp_path}/shards/{summary['pattern']}", stage="align", tokenizer=tok,
                                    processor=image_processor(VisionConfig(), 32), batch_size=4)))
    assert [tok.decode([t for t in row if t != -100]) for row in batch["labels"].tolist()] == ["a red circle </s>"] * 4


def _img2dataset_shards(folder, n_shards=3, per_shard=4):
    """img2dataset's layout, with no index.json: 00000.tar holding 000000000.jpg/.txt/.json, ..."""
    import io

    folder.mkdir()
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            buf = io.BytesIO()
            _img(s * 10 + i).save(buf, format="JPEG")
            meta = json.dumps({"url": f"http://example.com/{key}.jpg", "status": "success", "key": key})
            members += [(f"{key}.jpg", buf.getvalue()), (f"{key}.txt", b"a red circle"), (f"{key}.json", meta.encode())]
        write_tar(folder / f"{s:05d}.tar", members)
    return f"{folder}/{{00000..{n_shards - 1:05d}}}.tar"


def test_index_shards_makes_subsets_work_on_foreign_shards(tmp_path):
    from eelight.data.loader import subset_keys

    pattern = _img2dataset_shards(tmp_path / "laion")
    tok = build_word_tokenizer(["a", "red", "circle"], tmp_path / "tok")
    proc = image_processor(VisionConfig(), 32)

    def keys(**kw):
        return [k for b in make_pipeline(pattern, stage="align", tokenizer=tok, processor=proc, batch_size=3, **kw)
                for k in b["keys"]]

    with pytest.raises(FileNotFoundError, match=r"laion/index.json not found.*index_shards.py --shards"):
        keys(subset=5)
    # Cut the last shard inside 000020002.txt: webdataset still hands on that sample's whole .jpg
    # (the loader then skips it as a sample without text) and nothing after it.
    last = tmp_path / "laion" / "00002.tar"
    with tarfile.open(last) as tar:
        cut = tar.getmember("000020002.txt").offset_data + 2
    last.write_bytes(last.read_bytes()[:cut])
    summary = _run("index_shards.py", "--shards", pattern)
    urls = sorted(str(p) for p in (tmp_path / "laion").glob("*.tar"))  # webdataset's own reading:
    raw = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(urls),
                                                  wds.tarfile_to_samples(handler=wds.ignore_and_continue))]
    split = json.loads((tmp_path / "laion" / "index.json").read_text())["splits"]["train"]
    assert [k for shard in split["shards"] for k in shard["keys"]] == raw and len(raw) == 11
    assert summary == {str(tmp_path / "laion"): {"samples": 11, "shards": 3, "bad": {"tar": 1}}}
    assert split["pattern"] == "{00000..00002}.tar" and keys() == raw[:-1]
    assert sorted(keys(subset=5, shuffle=20, seed=3)) == sorted(raw[:5])
    assert set(keys(subset=5)) < set(keys(subset=10))
    first = subset_keys(sorted(str(p) for p in (tmp_path / "laion").glob("*.tar")), 4)
    assert first == (set(raw[:4]), {urls[0]: 4})  # 4 keys sit in the first shard: only it is read
    (tmp_path / "laion" / "00003.tar").write_bytes((tmp_path / "laion" / "00000.tar").read_bytes())
    with pytest.raises(ValueError, match=r"keys of shard .*00003.tar, which index.json beside it does not list"):
        subset_keys([f"{tmp_path}/laion/{i:05d}.tar" for i in range(4)], 5)


@pytest.mark.parametrize("compressed", [False, True])
def test_tar_keys_agree_with_webdataset_at_every_cut(tmp_path, compressed):
    """Cut a shard (plain, or .tar.gz) every 97 bytes: the indexed keys are what webdataset
    hands on from it, and a cut inside the archive is reported."""
    import gzip

    from eelight.data.shards import tar_keys

    _img2dataset_shards(tmp_path / "s", n_shards=1)
    whole = (tmp_path / "s" / "00000.tar").read_bytes()
    with tarfile.open(tmp_path / "s" / "00000.tar") as tar:
        archive_end = tar.getmembers()[-1].offset_data + 512  # the last member's data fits one block
    if compressed:
        whole, archive_end = gzip.compress(whole), len(gzip.compress(whole))
    shard = tmp_path / ("cut.tar.gz" if compressed else "cut.tar")
    shard.write_bytes(whole)
    assert tar_keys(shard) == ([f"0000000{i:02d}" for i in range(4)], False)
    for cut in range(0, archive_end, 97):
        shard.write_bytes(whole[:cut])
        raw = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList([str(shard)]),
                                                      wds.tarfile_to_samples(handler=wds.ignore_and_continue))]
        assert tar_keys(shard) == (raw, True), cut


@pytest.mark.parametrize("script,option", [("llava_json.py", "--out"), ("folder_jsonl.py", "--out"),
                                           ("synthetic_probe.py", "--out"), ("index_shards.py", "--shards")])
def test_converters_have_help(script, option):
    out = subprocess.run([sys.executable, str(ROOT / "data_pipelines" / script), "--help"], capture_output=True,
                         text=True, check=True)
    assert option in out.stdout
