"""Dataset formats, each normalized to one of three internal forms, and nested column paths.

- `Text`: language modeling, every token trained, EOS appended.
- `PromptCompletion`: two strings; the completion (EOS appended) is what `completion_only_loss` trains.
- `Conversation`: chat messages (+ tools) rendered by the chat template. `n_prompt` is set for
  conversational prompt-completion rows (and Alpaca): the first `n_prompt` messages are the prompt.
  Messages come out as transformers' chat format: roles system/user/assistant/tool, tool calls
  structured (below), other speaker names mapped (SPEAKER_ROLES, or the `*_tag` keys of `columns`).

`FORMATS` is the one registry of formats (the settings' checks read it). A `columns` value may be a path
into a row (`instances.0.output`), and `expand` turns a column holding a list of objects into one row
per element. A row that cannot be normalized raises `BadRow` with a reason key (counted when dropped).

What one message may carry. Tool calls: templates render a call with `tojson` (Qwen2.5, Llama 3.1, Mistral) and expect
`{"type": "function", "function": {"name": str, "arguments": dict}}`: OpenAI's format carries
`arguments` as a JSON *string*, which those templates would encode a second time. ShareGPT data in
LLaMA-Factory's convention writes the call(s) as the JSON text of a `function_call` turn. Both become
the structured form here; a bad one is a bad row (`bad_tool_call` / `bad_tools`).

Per-message loss: a `weight` (float >= 0; 0 = not trained, 2 = its tokens count twice) and a `train`
flag (`train: true` trains the message even when its role is not in `data.roles_to_train`); a source
names other keys for them in `columns` (`weight_tag`, `train_tag`). They are taken off the messages
here, so chat templates never see them; masks.py applies them with the run's settings.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

from sft_exp.errors import BadRow, DataError, closest_name


def _json(value, where: str):
    """`value` decoded if it is a JSON string, else as given."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err}): {value[:60]!r}") from None


def structured_call(call, where: str) -> dict:
    """One call, OpenAI-shaped (`{id?, type, function: {name, arguments}}`) or bare (`{name, arguments}`)."""
    call = _json(call, where)
    if not isinstance(call, dict):
        raise ValueError(f"{where} is a {type(call).__name__}, not a {{name, arguments}} object")
    function = call.get("function")
    body = function if isinstance(function, dict) else call
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} has no function 'name'")
    # Llama 3.1 writes its calls with "parameters"; a call without either takes no arguments.
    arguments = body.get("arguments", body.get("parameters"))
    at = f"{where}.function.arguments" if body is function else f"{where}.arguments"
    arguments = {} if arguments is None else _json(arguments, at)
    if not isinstance(arguments, dict):
        raise ValueError(f"{at} is a JSON {type(arguments).__name__}, not an object of named arguments")
    structured = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call.get("id") is not None:
        structured["id"] = call["id"]
    return structured


def structured_calls(calls, where: str) -> list[dict]:
    """A list of calls, a single call, or the JSON text of either (a `function_call` turn's content)."""
    calls = _json(calls, where)
    if isinstance(calls, dict):
        return [structured_call(calls, where)]
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"{where} must be a tool call object or a non-empty list of them")
    return [structured_call(call, f"{where}[{i}]") for i, call in enumerate(calls)]


def legacy_function_call(message: dict, where: str) -> dict:
    """OpenAI's older `{"role": "assistant", "function_call": {name, arguments}}` as `tool_calls`."""
    message = dict(message)
    message["tool_calls"] = [structured_call(message.pop("function_call"), f"{where}.function_call")]
    return message


def structured_tools(tools: list) -> list:
    """Bare function schemas (`{name, description, parameters}`, LLaMA-Factory's `tools`) wrapped as
    `{"type": "function", "function": ...}`, which transformers, OpenAI clients and templates use."""
    return [
        {"type": "function", "function": tool} if "name" in tool and "function" not in tool else tool for tool in tools
    ]


# `columns` keys naming the message keys that hold a message's weight and train flag.
MESSAGE_LOSS_TAGS = ("weight_tag", "train_tag")


class MessageLoss(NamedTuple):
    weight: float | None  # None: the row sets none
    train: bool | None
    where: str  # e.g. messages[3], for errors


def _keys(tags: tuple | None) -> tuple[str, str]:
    tags = dict(tags or ())
    return str(tags.get("weight_tag", "weight")), str(tags.get("train_tag", "train"))


def loss_keys(turn: dict, tags: tuple | None) -> dict:
    """The weight / train entries of a turn (ShareGPT turns are rebuilt key by key: keep these)."""
    if not isinstance(turn, dict):
        return {}
    return {key: turn[key] for key in _keys(tags) if turn.get(key) is not None}


def _bad(where: str, detail: str):

    return BadRow("bad_weight", f"{where}: {detail}")


def _weight(value, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _bad(
            where,
            f"'{key}' is {value!r}; a message's weight must be a number >= 0 "
            "(0: not trained, 1: as usual, 2: counts twice)",
        )
    return float(value)


def _train(value, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, f"'{key}' is {value!r}; a message's train flag must be true or false")
    return value


def message_loss_weights(messages: list[dict], tags: tuple | None, wheres: list[str] | None) -> list | None:
    """Per message its MessageLoss, taking the keys off the messages; None when no message sets one."""
    weight_key, train_key = _keys(tags)
    if not any(weight_key in message or train_key in message for message in messages):
        return None
    wheres = wheres or [f"messages[{i}]" for i in range(len(messages))]
    losses = []
    for message, where in zip(messages, wheres):
        weight, train = message.pop(weight_key, None), message.pop(train_key, None)
        losses.append(MessageLoss(
            None if weight is None else _weight(weight, where, weight_key),
            None if train is None else _train(train, where, train_key),
            where,
        ))  # fmt: skip
    return losses


# Names inside the turns of a conversation, set in `columns` beside the columns (LLaMA-Factory's
# dataset_info `tags`, same names): the keys holding speaker and text, and a speaker name of the
# file for each kind of turn (added to the built-in names of SPEAKER_ROLES).
TURN_TAGS = (
    "role_tag",
    "content_tag",
    "system_tag",
    "user_tag",
    "assistant_tag",
    "function_tag",
    "observation_tag",
    *MESSAGE_LOSS_TAGS,
)


@dataclass(frozen=True)
class Format:
    """One data format: the fields a row needs and may have (`columns` maps them to a file's columns),
    and the function that turns a row (field -> value) into Text, PromptCompletion or Conversation.
    `has_prompt`: its rows have a prompt part (what completion_only_loss masks)."""

    name: str
    required: tuple
    optional: tuple
    normalize: Callable[[dict], Text | PromptCompletion | Conversation]
    has_prompt: bool = False

    @property
    def fields(self) -> tuple:
        return self.required + self.optional


# name -> Format, in the order auto-detection tries them on a file's columns: the order of the
# @data_format functions below (conversations before prompt/completion, plain text last).
FORMATS: dict[str, Format] = {}


def data_format(name: str, required: tuple, optional: tuple = (), has_prompt: bool = False):
    """Register the decorated `normalize(row)` as format `name`: one entry is the whole format."""

    def register(normalize):
        FORMATS[name] = Format(name, tuple(required), tuple(optional), normalize, has_prompt)
        return normalize

    return register


# Speaker name -> kind of turn. "tool_call": an assistant turn whose text is the call(s) as JSON
# (LLaMA-Factory's `function_call`); it becomes an assistant message with structured `tool_calls`.
# "function" is OpenAI's legacy role for a function's result; "ipython" is Llama 3's.
SPEAKER_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant",
    "system": "system",
    "function_call": "tool_call", "tool_call": "tool_call", "tool_calls": "tool_call",
    "tool": "tool", "observation": "tool", "function_response": "tool", "function": "tool", "ipython": "tool",
    "tool_response": "tool", "tool_result": "tool", "tool_results": "tool",
}  # fmt: skip
_TAG_KINDS = {"system_tag": "system", "user_tag": "user", "assistant_tag": "assistant",
              "function_tag": "tool_call", "observation_tag": "tool"}  # fmt: skip
# The `columns` entry that carries a source's turn tags to normalize_row (not a column of the file).
TURN_TAGS_FIELD = "__turn_tags__"


# Files whose rows Arrow cannot give one schema (a field that is a string in one row and a number
# in another) are loaded as one JSON string per row in this column, and decoded row by row.
RAW_JSON_COLUMN = "__sft_exp_raw_json__"


class Text(NamedTuple):
    text: str


class PromptCompletion(NamedTuple):
    prompt: str
    completion: str


class Conversation(NamedTuple):
    messages: list
    tools: list | None
    n_prompt: int | None  # prompt-completion rows: number of prompt messages
    # Per message: its loss weight as the row sets it (`weight` / `train`), None where it sets none;
    # None for the whole row when no message sets one (message_loss_weights, below).
    message_losses: list | None = None


def with_system_prompt(item, system_prompt: str | None):
    """`data.system_prompt`: a conversation without a system message gets one, first; other rows (text,
    string prompt-completion, conversations with their own system message) stay as they are."""
    if not system_prompt or not isinstance(item, Conversation):
        return item
    if item.messages and item.messages[0].get("role") == "system":
        return item
    return item._replace(
        messages=[{"role": "system", "content": system_prompt}, *item.messages],
        n_prompt=None if item.n_prompt is None else item.n_prompt + 1,
        message_losses=None if item.message_losses is None else [None, *item.message_losses],
    )


def column_map(fmt: str, columns: dict) -> dict:
    """Format field -> column name in the file, for every field of `fmt`; turn tags the source sets
    ride along under TURN_TAGS_FIELD as sorted (tag, name) pairs."""
    mapping = {field: columns.get(field, field) for field in FORMATS[fmt].fields if field not in TURN_TAGS}
    tags = tuple(sorted((tag, str(name)) for tag, name in columns.items() if tag in TURN_TAGS))
    if tags:
        mapping[TURN_TAGS_FIELD] = tags
    return mapping


def detect_format(fmt: str, column_names: list[str], columns: dict, where: str) -> str:
    """The format of a source: `fmt` itself, or the first format whose required columns exist."""
    unknown = set(columns) - {f for known in FORMATS.values() for f in known.fields}
    if unknown:
        raise DataError(f"{where}: `columns` names unknown format fields {sorted(unknown)}")
    candidates = [fmt] if fmt != "auto" else list(FORMATS)
    for candidate in candidates:
        required = FORMATS[candidate].required
        mapping = column_map(candidate, columns)
        absent = [f for f in required if top_column(mapping[f], column_names) not in column_names]
        if not absent:
            return candidate
        if fmt != "auto":
            raise DataError(f"{where}: {absent_field_message(fmt, absent[0], columns, column_names)}")
    raise DataError(
        f"{where}: cannot tell the format from the columns {column_names}; set `format` to one of "
        f"{', '.join(FORMATS)} and, if the names differ, `columns` (e.g. {{prompt: question, completion: answer}})"
    )


def absent_field_message(fmt: str, field: str, columns: dict, column_names: list[str]) -> str:
    """A format field the file has no column for: the user's own mapping that names no column, or the field
    to map to one of the file's columns (`columns` goes from the format's field to the file's column)."""
    if field in columns:
        close = closest_name(columns[field], column_names)
        hint = f"did you mean columns.{field}={close}? " if close else ""
        return (
            f"columns.{field}={columns[field]}: the file has no column {columns[field]!r}; {hint}its columns "
            f"are {column_names}"
        )
    example = closest_name(field, column_names, cutoff=0.5) or "<one of the file's columns>"
    return (
        f"format '{fmt}' reads its `{field}` field from a column named {field!r}, which the file does not have "
        f"(its columns are {column_names}); name the column of yours that holds it: columns={{{field}: {example}}} "
        "(a field inside nested rows by its path, e.g. instances.0.output)"
    )


def field_values(row: dict, mapping: dict) -> dict:
    """Format field -> value of one row (a datasets row, or a raw JSON row)."""
    if RAW_JSON_COLUMN in row:
        row = json.loads(row[RAW_JSON_COLUMN])
        if not isinstance(row, dict):
            raise BadRow("bad_row", f"the row is a JSON {type(row).__name__}, not an object")
    values = {field: lookup(row, column) for field, column in mapping.items() if field != TURN_TAGS_FIELD}
    if TURN_TAGS_FIELD in mapping:
        values[TURN_TAGS_FIELD] = mapping[TURN_TAGS_FIELD]
    return values


def _without_nulls(value):
    """Arrow gives every struct all the keys seen in the file, filling the missing ones with null."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


class Speakers(NamedTuple):
    """How one source writes its turns: the keys of speaker and text, and speaker name -> role kind."""

    role_key: str
    content_key: str
    roles: dict


@functools.lru_cache(maxsize=64)
def speakers(tags: tuple | None, role_key: str, content_key: str) -> Speakers:
    """A source's speakers: the defaults, with the turn tags it sets in `columns` applied."""
    tags = dict(tags or ())
    roles = dict(SPEAKER_ROLES)
    roles.update({tags[tag]: kind for tag, kind in _TAG_KINDS.items() if tag in tags})
    return Speakers(tags.get("role_tag", role_key), tags.get("content_tag", content_key), roles)


def normalize_row(fmt: str, row: dict):
    """One row (format field -> value) in its internal form, or BadRow."""
    return FORMATS[fmt].normalize(row)


def _required(value, field: str, kind: type, wrong_type: tuple[str, str], empty: tuple[str, str]):
    """`value` when present, a `kind` and not empty; else the BadRow (reason, detail) of what is wrong
    ("{type}" in wrong_type's detail: the type it is)."""
    if value is None:
        raise BadRow("missing_field", f"the field '{field}' is missing or null")
    if not isinstance(value, kind):
        raise BadRow(wrong_type[0], wrong_type[1].replace("{type}", type(value).__name__))
    if not value:
        raise BadRow(*empty)
    return value


def _string_field(row: dict, field: str) -> str:
    return _required(
        row.get(field),
        field,
        str,
        ("non_string_content", f"the field '{field}' is a {{type}}, not a string"),
        ("empty_text", f"the field '{field}' is empty"),
    )


def _tools(value) -> list | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):  # a JSON-encoded list keeps a varying schema out of Arrow
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise BadRow("bad_tools", f"'tools' is not valid JSON ({err})") from None
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise BadRow("bad_tools", "'tools' must be a list of JSON schema objects")
    # No tools ("[]", as LLaMA-Factory's rows write it) renders as a call without tools would.
    return structured_tools(_without_nulls(value)) or None


def _tool_calls(message: dict, kind: str, where: str) -> dict:
    """An assistant message with structured `tool_calls` (from a tool-call turn's text, OpenAI's
    `tool_calls` with JSON-string arguments, or OpenAI's legacy `function_call`)."""
    try:
        if kind == "tool_call":  # the turn's text is the call(s)
            calls = message.pop("content", None)
            calls = message.get("tool_calls") if calls is None else calls
            if calls is None:
                raise BadRow("missing_field", f"{where} (a tool call turn) has no content")
            message["tool_calls"] = structured_calls(_without_nulls(calls), where)
        elif "tool_calls" in message:
            message["tool_calls"] = structured_calls(_without_nulls(message["tool_calls"]), f"{where}.tool_calls")
        else:
            message = legacy_function_call(_without_nulls(message), where)
    except ValueError as err:
        raise BadRow("bad_tool_call", str(err)) from None
    message["role"] = "assistant"
    return message


def _clean_message(message, where: str, roles: dict = SPEAKER_ROLES) -> dict:
    if not isinstance(message, dict):
        raise BadRow("bad_message", f"{where} is a {type(message).__name__}, not a {{role, content}} object")
    # Arrow fills keys a message lacks with null; templates expect them absent (as apply_chat_template does).
    message = {key: value for key, value in message.items() if value is not None}
    role = message.get("role")
    if role is None:
        raise BadRow("missing_field", f"{where} has no 'role'")
    kind = roles.get(role) if isinstance(role, str) else None
    if kind is None:
        raise BadRow(
            "unknown_role",
            f"{where} has the unknown role {role!r}; name its kind in the source's `columns` "
            f"(user_tag, assistant_tag, system_tag, function_tag or observation_tag, e.g. columns={{user_tag: {role}}})",
        )
    if kind == "tool_call" or (kind == "assistant" and ("tool_calls" in message or "function_call" in message)):
        message = _tool_calls(message, kind, where)
    elif kind != role:
        message["role"] = kind
    content = message.get("content")
    if content is None and not (kind in ("assistant", "tool_call") and message.get("tool_calls")):
        raise BadRow("missing_field", f"{where} ({role}) has no 'content'")
    if content is not None and not isinstance(content, str):
        raise BadRow("non_string_content", f"{where} ({role}) has {type(content).__name__} content, not a string")
    return message


def _turn_list(turns, field: str, what: str) -> list:
    """A conversation field that must be a non-empty list (of messages, or of ShareGPT turns)."""
    return _required(
        turns,
        field,
        list,
        ("bad_message", f"'{field}' is a {{type}}, not a list of {what}"),
        ("empty_conversation", f"'{field}' is an empty conversation"),
    )


def _renamed(message, keys: Speakers):
    """A message whose speaker and text sit under the source's own keys, under `role` and `content`."""
    if not isinstance(message, dict):
        return message
    message = dict(message)
    role, content = message.pop(keys.role_key, None), message.pop(keys.content_key, None)
    return {**message, "role": role, "content": content}


def _clean_messages(messages, field: str, tags: tuple | None = None) -> list[dict]:
    messages = _turn_list(messages, field, "messages")
    keys = speakers(tags, "role", "content")
    if (keys.role_key, keys.content_key) != ("role", "content"):
        messages = [_renamed(message, keys) for message in messages]
    return [_clean_message(message, f"{field}[{i}]", keys.roles) for i, message in enumerate(messages)]


def _conversation(
    messages: list[dict], tools, n_prompt: int | None, tags: tuple | None = None, wheres: list[str] | None = None
) -> Conversation:
    answered = messages[n_prompt or 0 :]
    if not any(message["role"] == "assistant" for message in answered):
        where = "the completion" if n_prompt is not None else "the conversation"
        raise BadRow("no_assistant_turn", f"{where} has no assistant turn to train on")
    return Conversation(messages, tools, n_prompt, message_loss_weights(messages, tags, wheres))


@data_format("messages", required=("messages",), optional=("tools", *TURN_TAGS))
def _messages(row: dict) -> Conversation:
    messages = _clean_messages(row.get("messages"), "messages", row.get(TURN_TAGS_FIELD))
    return _conversation(messages, _tools(row.get("tools")), None, row.get(TURN_TAGS_FIELD))


@data_format("sharegpt", required=("conversations",), optional=("system", "tools", *TURN_TAGS))
def _sharegpt(row: dict) -> Conversation:
    turns = _turn_list(row.get("conversations"), "conversations", "{from, value} turns")
    keys = speakers(row.get(TURN_TAGS_FIELD), "from", "value")
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(keys.role_key) is None:
            raise BadRow("missing_field", f"conversations[{i}] has no '{keys.role_key}'")
        message = {
            "role": turn[keys.role_key],
            "content": turn.get(keys.content_key),
            **loss_keys(turn, row.get(TURN_TAGS_FIELD)),
        }
        messages.append(_clean_message(message, f"conversations[{i}]", keys.roles))
    wheres = ["system"] * (len(messages) - len(turns)) + [f"conversations[{i}]" for i in range(len(turns))]
    return _conversation(messages, _tools(row.get("tools")), None, row.get(TURN_TAGS_FIELD), wheres)


@data_format("prompt_completion", required=("prompt", "completion"), optional=("tools", *TURN_TAGS), has_prompt=True)
def _prompt_completion(row: dict):
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        tags = row.get(TURN_TAGS_FIELD)
        prompt_messages = _clean_messages(prompt, "prompt", tags)
        completion_messages = _clean_messages(completion, "completion", tags)
        messages = prompt_messages + completion_messages
        wheres = [f"prompt[{i}]" for i in range(len(prompt_messages))]
        wheres += [f"completion[{i}]" for i in range(len(completion_messages))]
        return _conversation(messages, _tools(row.get("tools")), len(prompt_messages), tags, wheres)
    return PromptCompletion(_string_field(row, "prompt"), _string_field(row, "completion"))


@data_format("alpaca", required=("instruction", "output"), optional=("input", "system"), has_prompt=True)
def _alpaca(row: dict) -> Conversation:
    instruction = _string_field(row, "instruction")
    output = _string_field(row, "output")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise BadRow("non_string_content", f"the field 'input' is a {type(extra).__name__}, not a string")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    prompt = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    prompt.append({"role": "user", "content": user})
    return Conversation(prompt + [{"role": "assistant", "content": output}], None, len(prompt))


@data_format("text", required=("text",))
def _text(row: dict) -> Text:
    return Text(_string_field(row, "text"))


def top_column(name: str, present) -> str:
    """The file column a (possibly dotted) name reads: the name itself if the file has it, else its first part."""
    return name if name in present or "." not in name else name.split(".", 1)[0]


def lookup(row: dict, name: str):
    """The value at `name` in `row`: a column, else a dotted path (numbers index lists); None when absent."""
    if name in row or "." not in name:
        return row.get(name)
    value = row
    for part in name.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def expand_rows(batch: dict, column: str, raw_json_column: str) -> dict:
    """A map batch with each row repeated once per element of its `column` list, that element in its place
    (rows whose list is empty or missing are left out: they hold nothing to train)."""
    out = {key: [] for key in batch}
    size = len(next(iter(batch.values()))) if batch else 0
    for i in range(size):
        if raw_json_column in batch:
            row = json.loads(batch[raw_json_column][i])
            items = row.get(column) if isinstance(row, dict) else None
            for item in items if isinstance(items, list) else []:
                out[raw_json_column].append(json.dumps({**row, column: item}))
            continue
        items = batch[column][i]
        for item in items if isinstance(items, list) else []:
            for key in batch:
                out[key].append(item if key == column else batch[key][i])
    return out
