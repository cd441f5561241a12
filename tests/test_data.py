"""Reading, format detection, normalisation and row validation: every error names the file, row and field."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED, write_jsonl
from finetune_kit.config import DataArguments
from finetune_kit.data import load_rows, load_sft_datasets
from finetune_kit.data.formats import detect_format, normalise
from finetune_kit.errors import DataError


def rows_of(path, **kwargs):
    return load_rows(str(path), DataArguments(dataset_name=str(path), **kwargs))


# --- formats ----------------------------------------------------------------------------------------------------


def test_alpaca_with_input_system_and_history():
    row = {"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be brief.",
           "history": [["Hi", "Hello!"]]}
    assert normalise(row, detect_format(row, "r"), "r") == {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate\nchat"}, {"role": "assistant", "content": "cat"},
    ]}


def test_alpaca_without_input():
    row = {"instruction": "Say hi", "input": "", "output": "hi"}
    assert normalise(row, "alpaca", "r")["messages"][0] == {"role": "user", "content": "Say hi"}


def test_sharegpt_roles_and_system_column():
    row = {"system": "S", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert detect_format(row, "r") == "sharegpt"
    assert normalise(row, "sharegpt", "r")["messages"] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_messages_pass_through_and_extra_keys_dropped():
    row = {"messages": [{"role": "user", "content": "Q", "name": "x"}, {"role": "assistant", "content": "A"}]}
    assert detect_format(row, "r") == "messages"
    assert normalise(row, "messages", "r") == {"messages": [{"role": "user", "content": "Q"},
                                                            {"role": "assistant", "content": "A"}]}


def test_prompt_completion_and_text():
    assert detect_format({"prompt": "a", "completion": "b"}, "r") == "prompt_completion"
    assert normalise({"prompt": "a", "completion": "b"}, "prompt_completion", "r") == {"prompt": "a", "completion": "b"}
    assert detect_format({"text": "hello"}, "r") == "text"
    assert normalise({"text": "hello", "meta": 1}, "text", "r") == {"text": "hello"}


def test_real_llamafactory_files_load():
    alpaca = rows_of(SHARED / "llamafactory_demo" / "alpaca_en_demo.json")
    assert len(alpaca) == 999 and alpaca[0]["messages"][-1]["role"] == "assistant"
    kto = rows_of(SHARED / "llamafactory_demo" / "kto_en_demo.json", dataset_format="messages")
    assert len(kto) == 300
    c4 = rows_of(SHARED / "llamafactory_demo" / "c4_demo.jsonl")
    assert len(c4) == 300 and set(c4[0]) == {"text"}


# --- malformed rows ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, message", [
    ({"instruction": "q"}, r"line 2: missing field 'output'"),
    ({"instruction": "q", "output": ""}, r"line 2: field 'output' is empty"),
    ({"instruction": "q", "output": 5}, r"line 2: field 'output' must be a string, got int"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, r"line 2: history\[0\] must be a \[question"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"line 2: field 'messages': the conversation ends with a 'user'"),
    ({"messages": [{"role": "bot", "content": "q"}]}, r"line 2: messages\[0\]\.role is 'bot'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
     r"line 2: messages\[0\]: field 'content' is empty"),
    ({"messages": "hello"}, r"line 2: field 'messages' must be a list"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     r"line 2: conversations\[1\]\.from is 'robot'"),
    ({"messages": []}, r"line 2: field 'messages' holds no turns"),
])
def test_bad_row_named_by_line_and_field(tmp_path, row, message):
    # The first row fixes the format for "auto" only when it is the same format; name the format explicitly.
    good = {"instruction": "a", "output": "b"} if "instruction" in row else (
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
        if "conversations" in row else {"messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "a"}]})
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError, match=r"d\.jsonl " + message):
        rows_of(path)


def test_unknown_format_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"d\.jsonl line 1: unknown data format, columns are \['answer', 'question'\]"
                                        r".*column_mapping"):
        rows_of(path)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(DataError, match=r"d\.jsonl line 2: not valid JSON"):
        rows_of(path)


def test_json_array_rows_are_numbered(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "ok"}, {"text": ""}]))
    with pytest.raises(DataError, match=r"d\.json row 2: field 'text' is empty"):
        rows_of(path)


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object"):
        rows_of(path)


def test_missing_file_empty_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="dataset file not found: .*nope.jsonl"):
        rows_of(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        rows_of(tmp_path / "empty.jsonl")
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type '.xml'"):
        rows_of(tmp_path / "d.xml")


def test_hub_name_offline_fails_clearly():
    with pytest.raises(DataError, match="could not load dataset 'someone/not-here'.*Hugging Face Hub"):
        rows_of("someone/not-here")


# --- other file types, column mapping, splits ---------------------------------------------------------------------


def test_csv_tsv_and_txt(tmp_path):
    (tmp_path / "d.csv").write_text('prompt,completion\n"Hi, you",there\n')
    assert rows_of(tmp_path / "d.csv") == [{"prompt": "Hi, you", "completion": "there"}]
    (tmp_path / "d.tsv").write_text('prompt\tcompletion\na "quoted\tb\n')
    assert rows_of(tmp_path / "d.tsv") == [{"prompt": 'a "quoted', "completion": "b"}]
    (tmp_path / "d.txt").write_text("first doc\n\nsecond doc\n")
    assert rows_of(tmp_path / "d.txt") == [{"text": "first doc"}, {"text": "second doc"}]


def test_parquet(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "p", "completion": "c"}]).to_parquet(str(tmp_path / "d.parquet"))
    assert rows_of(tmp_path / "d.parquet") == [{"prompt": "p", "completion": "c"}]


def test_tsv_row_with_extra_field(tmp_path):
    (tmp_path / "d.tsv").write_text("text\nfine\nbad\textra\n")
    with pytest.raises(DataError, match=r"d\.tsv line 3: more fields than the header"):
        rows_of(tmp_path / "d.tsv")


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "answer": "A"}])
    rows = rows_of(path, column_mapping={"instruction": "question", "output": "answer"})
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "A"}


def test_seeded_split_is_deterministic(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(50)])
    args = DataArguments(dataset_name=str(path), eval_split_ratio=0.2)
    train, val = load_sft_datasets(args, seed=3)
    train2, val2 = load_sft_datasets(args, seed=3)
    assert len(val) == 10 and len(train) == 40 and val["text"] == val2["text"]
    assert not set(train["text"]) & set(val["text"])
    assert load_sft_datasets(args, seed=4)[1]["text"] != val["text"]


def test_separate_eval_file(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "c"}])
    t, v = load_sft_datasets(DataArguments(dataset_name=str(train), eval_dataset_name=str(val)))
    assert t["text"] == ["a", "b"] and v["text"] == ["c"]
