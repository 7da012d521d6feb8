"""Converters -> shards -> loader round trips, with skipped entries counted."""

import json
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
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
    (tmp_path / "data.json").write_text(json.dumps(records))
    summary = _run("llava_json.py", "--json", str(tmp_path / "data.json"), "--images", str(tmp_path / "imgs"),
                   "--out", str(tmp_path / "shards"), "--shard-size", "2")
    assert summary["samples"] == 5 and summary["shards"] == 3
    assert summary["bad"] == {"no_image": 1, "missing_image": 1, "unreadable_image": 1}
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


@pytest.mark.parametrize("script", ["llava_json.py", "folder_jsonl.py", "synthetic_probe.py"])
def test_converters_have_help(script):
    out = subprocess.run([sys.executable, str(ROOT / "data_pipelines" / script), "--help"], capture_output=True,
                         text=True, check=True)
    assert "--out" in out.stdout
