"""The official `openai` Python SDK's typed helpers against the gateway, unchanged:
`chat.completions.parse` with a pydantic model (JSON schema output, parsed and validated by
the SDK), and tool calls in `message.tool_calls` (forced, so the call is certain). Prints one
JSON line of what it saw; gateway/tests/structured_output.rs checks it.

    python structured.py BASE_URL API_KEY MODEL
"""
import json
import sys
from typing import List, Literal

from openai import OpenAI
from pydantic import BaseModel, Field


class Medication(BaseModel):
    drug: str = Field(max_length=16)
    dose_mg: int = Field(ge=1, le=1000)
    route: Literal["oral", "iv", "topical"]


class Prescription(BaseModel):
    patient: str = Field(max_length=24)
    medications: List[Medication] = Field(min_length=1, max_length=2)


base_url, api_key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key)
parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
parsed = parse(
    model=model,
    messages=[{"role": "user", "content": "Write a prescription for a patient with a cough."}],
    response_format=Prescription,
    temperature=1.0,
    seed=3,
    max_tokens=300,
)
prescription = parsed.choices[0].message.parsed

weather_tool = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
called = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=[weather_tool],
    tool_choice="required",
    max_tokens=100,
)
message = called.choices[0].message
call = message.tool_calls[0]
# The follow-up turn: the assistant's call and the tool's answer go back in.
follow_up = client.chat.completions.create(
    model=model,
    messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ],
    tools=[weather_tool],
    max_tokens=30,
)
print(json.dumps({
    "patient": prescription.patient,
    "medications": [m.model_dump() for m in prescription.medications],
    "tool_name": call.function.name,
    "tool_arguments": json.loads(call.function.arguments),
    "tool_call_id": call.id,
    "finish_reason": called.choices[0].finish_reason,
    "follow_up_finish": follow_up.choices[0].finish_reason,
}))
