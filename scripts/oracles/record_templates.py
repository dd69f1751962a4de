#!/usr/bin/env python3
"""Asks a running llama-server (started with --jinja --chat-template-file TEMPLATE) to render
fixed conversations with /apply-template, and writes what it answers as a JSON fixture that
local_engine/tests/chat_templates.rs compares our rendering against.

Usage: record_templates.py URL TEMPLATE_NAME WITH_TOOLS OUT_JSON
"""
import json
import sys
import urllib.request

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}

CONVERSATIONS = [
    {"name": "system_and_user", "messages": [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "What is a GPU?"}]},
    {"name": "three_turns", "messages": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi. How can I help?"},
        {"role": "user", "content": "Name a prime number."}]},
    {"name": "markup_in_text", "messages": [
        {"role": "user", "content": "Print <|im_start|> and </s> literally."}]},
]

TOOL_CONVERSATIONS = [
    {"name": "tools_offered", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Seoul?"}]},
    {"name": "tool_call_and_result", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Seoul?"},
        {"role": "assistant", "content": "", "tool_calls": [{
            # Nine letters and digits: Mistral's templates refuse other ids.
            "id": "call12345", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Seoul\"}"}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": "{\"celsius\": 3}"},
    ]},
]


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def main():
    url, name, with_tools, out = sys.argv[1:5]
    cases = []
    conversations = CONVERSATIONS + (TOOL_CONVERSATIONS if with_tools == "1" else [])
    for conversation in conversations:
        body = {"messages": conversation["messages"]}
        if "tools" in conversation:
            body["tools"] = conversation["tools"]
        answer = post(f"{url}/apply-template", body)
        cases.append(dict(conversation, prompt=answer["prompt"]))
    json.dump({"template": name, "cases": cases}, open(out, "w"), indent=1, ensure_ascii=False)
    print(out)


if __name__ == "__main__":
    main()
