"""The data layer: read records, recognise their format, tokenize them, batch them.

    readers    read_records(source) -> [Record(data, path, line)]   files, directories, hub names
    formats    RecordKind, detect_kind, validate                    which format, and is it sound
    chat       render_chat_prompt, tokenize_prompt                  a list of messages -> text -> ids
    tokenize   load_{sft,preference,unpaired,prompt}_dataset        token ids under a TruncationPolicy
    collate    collate_{sft,preference,unpaired,prompts}            padded tensors for a batch

Every problem a user's data can have is a ``preflab.errors.DataError`` naming the file, the
line and the field.

May import: errors.
"""

from preflab.data.chat import PromptText, render_chat_prompt, tokenize_prompt
from preflab.data.collate import (
    collate_preference,
    collate_prompts,
    collate_sft,
    collate_unpaired,
    pad_sequences,
)
from preflab.data.formats import RecordKind, detect_kind, extract_prompt, resolve_kind, validate
from preflab.data.readers import Record, read_records
from preflab.data.tokenize import (
    PreferenceExample,
    PromptExample,
    SFTExample,
    TruncationPolicy,
    TruncationReport,
    UnpairedExample,
    check_dataset,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
    load_unpaired_dataset,
    split_train_eval,
)
from preflab.data.writers import write_jsonl

__all__ = [
    "check_dataset",
    "write_jsonl",
    "PreferenceExample",
    "PromptExample",
    "PromptText",
    "Record",
    "RecordKind",
    "SFTExample",
    "TruncationPolicy",
    "TruncationReport",
    "UnpairedExample",
    "collate_preference",
    "collate_prompts",
    "collate_sft",
    "collate_unpaired",
    "detect_kind",
    "extract_prompt",
    "load_preference_dataset",
    "load_prompt_dataset",
    "load_sft_dataset",
    "load_unpaired_dataset",
    "pad_sequences",
    "read_records",
    "render_chat_prompt",
    "resolve_kind",
    "split_train_eval",
    "tokenize_prompt",
    "validate",
]
