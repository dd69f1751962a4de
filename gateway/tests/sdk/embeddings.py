"""The official `openai` Python SDK against the gateway's /v1/embeddings, unchanged: its typed
helper, its default encoding (the SDK asks for base64 and decodes it), and explicit floats.
Prints one JSON line of what it saw; gateway/tests/embeddings.rs checks it.

    python embeddings.py BASE_URL API_KEY MODEL
"""
import json
import sys

from openai import OpenAI

base_url, api_key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key)
default = client.embeddings.create(model=model, input=["The patient was discharged.", "Hi"])
floats = client.embeddings.create(model=model, input="Hi", encoding_format="float")
print(json.dumps({
    "count": len(default.data),
    "indexes": [d.index for d in default.data],
    "dimensions": len(default.data[0].embedding),
    "prompt_tokens": default.usage.prompt_tokens,
    "hi_default": default.data[1].embedding,
    "hi_float": floats.data[0].embedding,
    "model": default.model,
}))
