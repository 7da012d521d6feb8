"""Benchmark files in their official formats, written by the tests: what is read, and bad
input named by file and row (through the CLI: exit 2, one line)."""

import base64
import csv
import io
import json

import pytest
from PIL import Image

from eelight.eval.base import BenchmarkError
from eelight.eval.docvqa import DocVQA
from eelight.eval.mmbench import MMBench
from eelight.eval.seed import SeedBench
from eelight.eval.textvqa import TextVQA


def _png(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def _tsv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _mm_row(index, answer="B", d="yellow", **extra):
    return {"index": index, "question": "what colour?", "hint": "", "A": "red", "B": "green", "C": "blue", "D": d,
            "answer": answer, "category": "attr", "l2-category": "attribute_reasoning",
            "image": base64.b64encode(_png()).decode(), **extra}


def test_mmbench_reads_rows_and_makes_rotations(tmp_path):
    file = _tsv(tmp_path / "mm.tsv", [_mm_row(0), _mm_row(1, answer="C", d="", hint="look closely")])
    items = MMBench(file).load()
    assert [i.qid for i in items] == ["0", "1000000", "2000000", "3000000", "1", "1000001", "2000001"]
    three = items[4]  # D is missing: three options, three rotations
    assert three.choices == {"A": "red", "B": "green", "C": "blue"} and three.gold == "C"
    assert three.question.startswith("look closely\nwhat colour?\nA. red\n")
    assert three.category == "attribute_reasoning" and three.group == "1"
    assert "image" not in three.row  # predictions files keep the rows without the base64 image


def test_mmbench_file_with_rotations_is_used_as_is(tmp_path):
    rows = [_mm_row(5), _mm_row(1_000_005, answer="A"), _mm_row(6)]
    items = MMBench(_tsv(tmp_path / "mm.tsv", rows)).load()
    assert [(i.qid, i.group, i.gold) for i in items] == [("5", "5", "B"), ("1000005", "5", "A"), ("6", "6", "B")]


def test_mmbench_limit_counts_questions_with_their_rotations(tmp_path):
    rows = [_mm_row(5), _mm_row(1_000_005, answer="A"), _mm_row(6), _mm_row(1_000_006, answer="A")]
    assert {i.group for i in MMBench(_tsv(tmp_path / "mm.tsv", rows), limit=1).load()} == {"5"}


@pytest.mark.parametrize("row, message", [
    (_mm_row(3, image="not base64!!"), "row 2: the image column is not valid base64"),
    (_mm_row(3, answer="E"), "row 2: answer 'E' is not one of the options"),
    (_mm_row("x3"), "row 2: index 'x3' is not a number"),
])
def test_mmbench_bad_rows_name_file_and_row(tmp_path, row, message):
    file = _tsv(tmp_path / "mm.tsv", [row])
    with pytest.raises(BenchmarkError, match=message) as err:
        MMBench(file).load()
    assert str(tmp_path / "mm.tsv") in str(err.value)


def test_mmbench_short_row_is_malformed(tmp_path):
    file = tmp_path / "mm.tsv"
    _tsv(file, [_mm_row(0)])
    with open(file, "a") as fh:
        fh.write("1\tonly two cells\n")
    with pytest.raises(BenchmarkError, match=r"row 3: missing field\(s\)"):
        MMBench(str(file)).load()


def _seed_file(tmp_path, questions):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.png").write_bytes(_png())
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"questions": questions, "question_type": {"Instance Attributes": 3}}))
    return str(path), str(tmp_path / "img")


def _seed_q(qid, type_id=3, data_id="a.png", answer="C"):
    return {"question_id": qid, "question_type_id": type_id, "data_id": data_id, "data_type": "image",
            "question": "what colour?", "answer": answer, "choice_a": "red", "choice_b": "green",
            "choice_c": "blue", "choice_d": "yellow"}


def test_seed_reads_image_questions_only(tmp_path):
    file, images = _seed_file(tmp_path, [_seed_q("1"), _seed_q("2", type_id=11), _seed_q("3", type_id=9)])
    items = SeedBench(file, images).load()
    assert [i.qid for i in items] == ["1", "3"]  # type 11 is a video question
    assert items[0].category == "Instance Attributes" and items[1].category == "type_9"
    assert items[0].choices["C"] == "blue" and items[0].plain_question == "what colour?"
    assert SeedBench(file, images, protocol="generation").score(items[0], "The answer is C").score == 1.0
    assert SeedBench(file, images).score(items[0], "C").score == 1.0


def test_seed_missing_image_and_field_are_named(tmp_path):
    file, images = _seed_file(tmp_path, [_seed_q("1", data_id="gone.png")])
    with pytest.raises(BenchmarkError, match=r"seed\.json, questions\[0\]: image .*gone\.png not found"):
        SeedBench(file, images).load()
    broken = _seed_q("1")
    del broken["choice_d"]
    file, images = _seed_file(tmp_path, [broken])
    with pytest.raises(BenchmarkError, match=r"questions\[0\]: missing field\(s\) \['choice_d'\]"):
        SeedBench(file, images).load()


def test_textvqa_reads_ten_answers_and_ocr(tmp_path):
    (tmp_path / "train_images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train_images" / "img1.jpg")
    row = {"question_id": 7, "image_id": "img1", "question": "what does it say?", "answers": ["stop"] * 10,
           "ocr_tokens": ["STOP", "sign"]}
    (tmp_path / "tv.json").write_text(json.dumps({"data": [row]}))
    (tmp_path / "ocr.json").write_text(json.dumps({"data": [{"image_id": "img1", "ocr_tokens": ["rosetta"]}]}))
    plain = TextVQA(str(tmp_path / "tv.json"), str(tmp_path / "train_images")).load()[0]
    assert plain.question == "what does it say?\nAnswer the question using a single word or phrase."
    own = TextVQA(str(tmp_path / "tv.json"), str(tmp_path / "train_images"), ocr="item").load()[0]
    assert "Reference OCR token: STOP, sign\n" in own.question
    rosetta = TextVQA(str(tmp_path / "tv.json"), str(tmp_path / "train_images"), ocr=str(tmp_path / "ocr.json"))
    assert "Reference OCR token: rosetta\n" in rosetta.load()[0].question
    bench = TextVQA(str(tmp_path / "tv.json"), str(tmp_path / "train_images"))
    assert bench.score(plain, "Stop.").score == 1.0
    row["answers"] = ["stop"] * 3
    (tmp_path / "tv.json").write_text(json.dumps({"data": [row]}))
    with pytest.raises(BenchmarkError, match=r"tv\.json, data\[0\]: `answers` must be the 10"):
        bench.load()


def test_docvqa_images_relative_to_the_json(tmp_path):
    (tmp_path / "documents").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "documents" / "d.png")
    rows = [{"questionId": 1, "question": "total?", "image": "documents/d.png", "answers": ["$5.00", "5"],
             "question_types": ["table/list"]}]
    (tmp_path / "val.json").write_text(json.dumps({"data": rows}))
    items = DocVQA(str(tmp_path / "val.json")).load()
    assert items[0].image_path == str(tmp_path / "documents" / "d.png") and items[0].category == "table/list"
    assert DocVQA("x").score(items[0], "$5.0").score == pytest.approx(1 - 1 / 5)
    assert DocVQA("x").results(items, [DocVQA("x").score(items[0], "zzz")]) == {
        "docvqa/anls": 0.0, "docvqa/anls/table_list": 0.0, "docvqa/unparsed": 0.0}


def test_not_json_is_named(tmp_path):
    (tmp_path / "val.json").write_text("{not json")
    with pytest.raises(BenchmarkError, match="val.json is not valid JSON"):
        DocVQA(str(tmp_path / "val.json")).load()


def test_cli_bad_benchmark_file_is_one_line_exit_2(tmp_path, capsys):
    """A bad file given to `eelight eval` ends with status 2 and one line naming file and row."""
    from eval_helpers import save_tiny_export

    from eelight.cli import main

    folder = save_tiny_export(tmp_path / "export", "ee_mllm")
    file = _tsv(tmp_path / "mm.tsv", [_mm_row(0, image="%%%")])
    capsys.readouterr()  # what building the export printed
    with pytest.raises(SystemExit) as stop:
        main(["eval", str(folder), "benchmarks=[mmbench]", f"eval.mmbench.file={file}", "--no-mlflow"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mm.tsv, row 2" in err and "base64" in err
    with pytest.raises(SystemExit) as stop:
        main(["eval", str(folder), "benchmarks=[mmbench,nope]", "--no-mlflow"])
    assert stop.value.code == 2 and "unknown benchmark(s) ['nope']" in capsys.readouterr().err
