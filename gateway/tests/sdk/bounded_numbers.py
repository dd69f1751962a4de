"""Structured output with a float field through the official SDK's `parse` (issue 30, item 11):
the grammar used to let a JSON number grow without end, and the default model wrote
`"population_millions": 3222233333333...` until its length limit, even at temperature 0, so
`parse` failed. Tries 8 seeds at the model's default sampling and one at temperature 0; prints
one JSON line: how many parsed, and what failed.

    python bounded_numbers.py BASE_URL API_KEY MODEL
"""
import json
import sys

from openai import OpenAI
from pydantic import BaseModel


class City(BaseModel):
    name: str
    country: str
    population_millions: float


base_url, api_key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key)
parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
attempts = [{"seed": seed} for seed in range(1, 9)] + [{"seed": 0, "temperature": 0.0}]
parsed, failures = 0, []
for sampling in attempts:
    try:
        answer = parse(
            model=model,
            messages=[{"role": "user", "content": "Tell me about Paris."}],
            response_format=City,
            max_tokens=200,
            **sampling,
        )
        city = answer.choices[0].message.parsed
        assert city is not None, "nothing parsed"
        parsed += 1
    except Exception as error:  # the SDK raises on `finish_reason: length` and bad JSON
        failures.append({"sampling": sampling, "error": f"{type(error).__name__}: {error}"[:300]})
print(json.dumps({"parsed": parsed, "attempts": len(attempts), "failures": failures}))
