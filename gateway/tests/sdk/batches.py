"""The official `openai` Python SDK's Files and Batch APIs against the gateway, unchanged:
upload a JSONL file, create a batch, poll it to completion, download its output; then a second
batch cancelled right after it is created. Prints one JSON line of what it saw;
gateway/tests/batches_api.rs checks it.

    python batches.py BASE_URL API_KEY MODEL
"""
import io
import json
import sys
import time

from openai import OpenAI

base_url, api_key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)
seen = {}


def jsonl(count, max_tokens):
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Say the number {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(count)
    ]
    return io.BytesIO("\n".join(json.dumps(l) for l in lines).encode())


uploaded = client.files.create(file=("requests.jsonl", jsonl(12, 4)), purpose="batch")
batch = client.batches.create(
    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
)
seen["created_status"] = batch.status
deadline = time.time() + 240
while batch.status not in ("completed", "failed", "expired", "cancelled") and time.time() < deadline:
    time.sleep(0.5)
    batch = client.batches.retrieve(batch.id)
output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
results = [json.loads(l) for l in output.splitlines() if l.strip()]
seen["batch"] = {
    "id": batch.id,
    "status": batch.status,
    "counts": batch.request_counts.model_dump(),
    "error_file_id": batch.error_file_id,
    "custom_ids": sorted(r["custom_id"] for r in results),
    "status_codes": sorted({r["response"]["status_code"] for r in results}),
    "objects": sorted({r["response"]["body"]["object"] for r in results}),
    "texts": [r["response"]["body"]["choices"][0]["message"]["content"] for r in results],
}
seen["file"] = {
    "purpose": client.files.retrieve(uploaded.id).purpose,
    "listed": uploaded.id in [f.id for f in client.files.list()],
}
seen["listed_batch"] = batch.id in [b.id for b in client.batches.list()]

big = client.files.create(file=("big.jsonl", jsonl(300, 32)), purpose="batch")
doomed = client.batches.create(
    input_file_id=big.id, endpoint="/v1/chat/completions", completion_window="24h"
)
cancelling = client.batches.cancel(doomed.id)
seen["cancel_status"] = cancelling.status
deadline = time.time() + 240
while doomed.status != "cancelled" and time.time() < deadline:
    time.sleep(0.5)
    doomed = client.batches.retrieve(doomed.id)
errors = client.files.content(doomed.error_file_id).text if doomed.error_file_id else ""
seen["cancelled"] = {
    "status": doomed.status,
    "codes": sorted({json.loads(l)["error"]["code"] for l in errors.splitlines() if l.strip() and json.loads(l)["error"]}),
    "error_lines": len([l for l in errors.splitlines() if l.strip()]),
    "counts": doomed.request_counts.model_dump(),
}
client.files.delete(big.id)
seen["deleted_listed"] = big.id in [f.id for f in client.files.list()]

print(json.dumps(seen))
