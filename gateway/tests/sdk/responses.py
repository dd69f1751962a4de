"""The official `openai` Python SDK's Responses API against the gateway, unchanged: a plain
response, the same streamed (the SDK's typed events and its accumulated final response),
structured output parsed into a pydantic model, a forced function call and a follow-up turn
through `previous_response_id`, then retrieve and delete. Prints one JSON line of what it saw;
gateway/tests/responses_api.rs checks it.

    python responses.py BASE_URL API_KEY MODEL
"""
import json
import sys

import openai
from openai import OpenAI
from pydantic import BaseModel, Field

base_url, api_key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)
seen = {}

plain = client.responses.create(
    model=model,
    instructions="You are a terse assistant.",
    input="Name a colour.",
    max_output_tokens=12,
    temperature=0,
)
seen["plain"] = {
    "id": plain.id,
    "status": plain.status,
    "text": plain.output_text,
    "output_types": [item.type for item in plain.output],
    "input_tokens": plain.usage.input_tokens,
    "output_tokens": plain.usage.output_tokens,
}

events = []
text = ""
with client.responses.stream(
    model=model,
    instructions="You are a terse assistant.",
    input="Name a colour.",
    max_output_tokens=12,
    temperature=0,
) as stream:
    for event in stream:
        events.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    final = stream.get_final_response()
seen["stream"] = {
    "events": events,
    "text": text,
    "final_text": final.output_text,
    "status": final.status,
    "output_tokens": final.usage.output_tokens,
}


class Cat(BaseModel):
    name: str = Field(max_length=12)
    legs: int = Field(ge=0, le=8)


parsed = client.responses.parse(
    model=model, input="Describe a cat.", text_format=Cat, max_output_tokens=80
)
cat = parsed.output_parsed
seen["structured"] = {"name": cat.name, "legs": cat.legs}

weather = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
called = client.responses.create(
    model=model,
    input="What is the weather in Lyon?",
    tools=[weather],
    tool_choice={"type": "function", "name": "get_weather"},
    max_output_tokens=60,
)
call = [item for item in called.output if item.type == "function_call"][0]
follow_up = client.responses.create(
    model=model,
    previous_response_id=called.id,
    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "12 C and sunny"}],
    tools=[weather],
    max_output_tokens=16,
    temperature=0,
)
seen["tools"] = {
    "name": call.name,
    "arguments": json.loads(call.arguments),
    "follow_up_previous": follow_up.previous_response_id,
    "follow_up_types": [item.type for item in follow_up.output],
    # The follow-up's prompt holds the whole first turn: more input than the first had.
    "first_input_tokens": called.usage.input_tokens,
    "follow_up_input_tokens": follow_up.usage.input_tokens,
}

# Each response lists its own input (the follow-up's: the call's output only, not the turn it
# continued).
seen["input_items"] = {
    "plain": [(i.type, i.role) for i in client.responses.input_items.list(plain.id).data],
    "follow_up": [i.type for i in client.responses.input_items.list(follow_up.id).data],
}

retrieved = client.responses.retrieve(plain.id)
client.responses.delete(plain.id)
try:
    client.responses.retrieve(plain.id)
    gone = None
except openai.NotFoundError as e:
    gone = e.status_code
seen["stored"] = {"retrieved_text": retrieved.output_text, "after_delete": gone}

print(json.dumps(seen))
