#!/usr/bin/env python3
"""Vendors the part of OpenAI's own OpenAPI document (the `openai/openai-openapi` repository's
`openapi.json`) that the gateway's conformance test checks responses against: the schemas of
every response body and stream event the gateway sends, and everything they refer to. The
result, `gateway/tests/schemas/openai.json`, is committed, so CI checks without the network.

    python3 scripts/oracles/vendor-openai-schemas.py path/to/openapi.json COMMIT

Only the reference closure is kept (a few hundred of the document's 1,400 schemas); schemas
are copied as they are, OpenAPI's 3.0-style `nullable: true` included (the test reads it as
"or null", as the document means).
"""
import json
import sys

ROOTS = [
    "ListModelsResponse",
    "Model",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ErrorResponse",
    "Response",
    "ResponseItemList",
    "ResponseCreatedEvent",
    "ResponseInProgressEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseContentPartAddedEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseContentPartDoneEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseFunctionCallArgumentsDeltaEvent",
    "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseCompletedEvent",
    "ResponseIncompleteEvent",
    "ResponseFailedEvent",
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "Batch",
    "ListBatchesResponse",
]


def refs(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


DOCUMENTATION = ("description", "example", "examples", "x-oaiMeta", "x-oaiTypeLabel", "title")


def strip(node, names=False):
    """Drops documentation-only keywords to keep the file small. `names`: `node` maps names to
    schemas (`properties`, `$defs`), where a key is a name, never a keyword."""
    if isinstance(node, dict):
        return {
            k: strip(v, names=not names and k in ("properties", "patternProperties", "$defs"))
            for k, v in node.items()
            if names or k not in DOCUMENTATION
        }
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main():
    document = json.load(open(sys.argv[1]))
    commit = sys.argv[2]
    schemas = document["components"]["schemas"]
    keep, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found = set()
        refs(schemas[name], found)
        todo.extend(found - keep)
    out = {
        "source": "https://github.com/openai/openai-openapi openapi.json",
        "commit": commit,
        "openapi": document["openapi"],
        "roots": ROOTS,
        "components": {"schemas": {n: strip(schemas[n]) for n in sorted(keep)}},
    }
    with open("gateway/tests/schemas/openai.json", "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
        f.write("\n")
    print(f"{len(keep)} schemas", file=sys.stderr)


main()
