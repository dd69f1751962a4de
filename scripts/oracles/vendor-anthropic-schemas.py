#!/usr/bin/env python3
"""Vendors Anthropic's documented shapes of the Messages API, as its official Python SDK
defines them (pydantic models, which the SDK's reference documentation is generated from), into
JSON Schemas: `gateway/tests/schemas/anthropic.json`, committed, so the conformance test checks
the gateway's `/v1/messages` bodies and events without the network.

    target/sdk-venv/bin/python scripts/oracles/vendor-anthropic-schemas.py

Run it with the SDK the tests pin (`anthropic==2.17.0`, `gateway/tests/common/mod.rs`).
"""
import json

import anthropic
from anthropic import types
from pydantic import TypeAdapter

ROOTS = {
    "Message": types.Message,
    "MessageTokensCount": types.MessageTokensCount,
    "RawMessageStartEvent": types.RawMessageStartEvent,
    "RawContentBlockStartEvent": types.RawContentBlockStartEvent,
    "RawContentBlockDeltaEvent": types.RawContentBlockDeltaEvent,
    "RawContentBlockStopEvent": types.RawContentBlockStopEvent,
    "RawMessageDeltaEvent": types.RawMessageDeltaEvent,
    "RawMessageStopEvent": types.RawMessageStopEvent,
    "ErrorResponse": types.ErrorResponse,
}


def main():
    schemas = {
        name: TypeAdapter(model).json_schema(mode="serialization")
        for name, model in ROOTS.items()
    }
    out = {
        "source": "the anthropic Python SDK's types (pydantic JSON Schema)",
        "sdk_version": anthropic.__version__,
        "schemas": schemas,
    }
    with open("gateway/tests/schemas/anthropic.json", "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
        f.write("\n")


main()
