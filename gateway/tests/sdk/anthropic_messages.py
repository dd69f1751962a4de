"""The official `anthropic` Python SDK and LangChain's `ChatAnthropic` against the gateway's
`/v1/messages`, unchanged: a plain message, the same streamed (the SDK's event parser and
`get_final_message`), a forced tool call and a follow-up turn with its `tool_result`,
`count_tokens`, and an error as the SDK raises it. Prints one JSON line of what it saw;
gateway/tests/messages_api.rs checks it.

    python anthropic_messages.py BASE_URL API_KEY MODEL
"""
import json
import sys

import anthropic
from langchain_anthropic import ChatAnthropic

base_url, api_key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0)
seen = {}

plain = client.messages.create(
    model=model,
    max_tokens=12,
    extra_body={"temperature": 0},
    system="You are a terse assistant.",
    messages=[{"role": "user", "content": "Name a colour."}],
)
seen["plain"] = {
    "type": plain.type,
    "role": plain.role,
    "text": plain.content[0].text,
    "stop_reason": plain.stop_reason,
    "input_tokens": plain.usage.input_tokens + (plain.usage.cache_read_input_tokens or 0),
    "output_tokens": plain.usage.output_tokens,
}

events = []
with client.messages.stream(
    model=model,
    max_tokens=12,
    extra_body={"temperature": 0},
    system="You are a terse assistant.",
    messages=[{"role": "user", "content": "Name a colour."}],
) as stream:
    text = ""
    for event in stream:
        events.append(event.type)
        if event.type == "text":
            text += event.text
    final = stream.get_final_message()
seen["stream"] = {
    "events": events,
    "text": text,
    "final_text": final.content[0].text,
    "stop_reason": final.stop_reason,
    "output_tokens": final.usage.output_tokens,
}

weather = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    },
}
asked = [{"role": "user", "content": "What is the weather in Lyon?"}]
called = client.messages.create(
    model=model,
    max_tokens=60,
    tools=[weather],
    tool_choice={"type": "tool", "name": "get_weather"},
    messages=asked,
)
use = [b for b in called.content if b.type == "tool_use"][0]
answered = client.messages.create(
    model=model,
    max_tokens=16,
    extra_body={"temperature": 0},
    tools=[weather],
    messages=asked
    + [
        {"role": "assistant", "content": [b.model_dump() for b in called.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "12 C and sunny"}],
        },
    ],
)
seen["tools"] = {
    "stop_reason": called.stop_reason,
    "name": use.name,
    "input": use.input,
    "follow_up_stop_reason": answered.stop_reason,
    "follow_up_types": [b.type for b in answered.content],
}

streamed_call = []
with client.messages.stream(
    model=model,
    max_tokens=60,
    tools=[weather],
    tool_choice={"type": "any"},
    messages=asked,
) as stream:
    for event in stream:
        streamed_call.append(event.type)
    final = stream.get_final_message()
seen["stream_tools"] = {
    "events": streamed_call,
    "stop_reason": final.stop_reason,
    "input": [b.input for b in final.content if b.type == "tool_use"],
}

structured = client.messages.create(
    model=model,
    max_tokens=80,
    messages=[{"role": "user", "content": "Describe a cat."}],
    output_config={
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "legs": {"type": "integer", "minimum": 0, "maximum": 8},
                },
                "required": ["name", "legs"],
                "additionalProperties": False,
            },
        }
    },
)
seen["structured"] = json.loads(structured.content[0].text)

counted = client.messages.count_tokens(
    model=model,
    system="You are a terse assistant.",
    messages=[{"role": "user", "content": "Name a colour."}],
)
seen["count_tokens"] = counted.input_tokens

try:
    client.messages.create(
        model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
    )
    seen["error"] = None
except anthropic.NotFoundError as e:
    seen["error"] = {"status": e.status_code, "type": e.body["error"]["type"]}

chat = ChatAnthropic(
    model=model,
    base_url=base_url,
    api_key=api_key,
    max_tokens=12,
    max_retries=0,
)
reply = chat.invoke("Name a colour.")
seen["langchain"] = {
    "text": reply.content if isinstance(reply.content, str) else reply.content[0]["text"],
    "output_tokens": reply.usage_metadata["output_tokens"],
}

print(json.dumps(seen))
