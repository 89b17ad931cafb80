"""Tool calls and tool schemas in the shape chat templates are written for (transformers' chat format).

Templates render a call with `tojson` (Qwen2.5, Llama 3.1, Mistral) and expect
`{"type": "function", "function": {"name": str, "arguments": dict}}`: OpenAI's format carries
`arguments` as a JSON *string*, which those templates would encode a second time. ShareGPT data in
LLaMA-Factory's convention writes the call(s) as the JSON text of a `function_call` turn
(`{"name", "arguments"}` or a list of them). Both become the structured form here.

Functions raise `ValueError` with a message naming where the problem is; formats.py turns it into a
bad row (`bad_tool_call` / `bad_tools`), so `data.on_bad_row=drop` counts it.
"""
from __future__ import annotations

import json


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
    return [{"type": "function", "function": tool} if "name" in tool and "function" not in tool else tool for tool in tools]
