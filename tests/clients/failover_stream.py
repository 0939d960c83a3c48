"""Streams one answer with the official `openai` Python client and prints what the client saw
as one JSON object, for the mid-stream failover tests: the text, every chunk's id, model and
created, and the usage chunk. The client raises on an error event, so a printed result means
the stream was one clean answer.

usage: failover_stream.py BASE_URL MODE MODEL MAX_TOKENS
  MODE chat: chat.completions.create(stream=True, stream_options={"include_usage": True})
  MODE completions: completions.create(prompt="Once upon a time", same options)
"""

import json
import sys

import openai

base, mode, model, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
opts = dict(model=model, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
if mode == "chat":
    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": "hi"}], **opts
    )
else:
    stream = client.completions.create(prompt="Once upon a time", **opts)

text, ids, models, created, usages = "", [], [], [], []
for chunk in stream:
    ids.append(chunk.id)
    models.append(chunk.model)
    created.append(chunk.created)
    if chunk.usage is not None:
        usages.append(chunk.usage.model_dump())
    for c in chunk.choices:
        piece = c.delta.content if mode == "chat" else c.text
        text += piece or ""
print(json.dumps({"text": text, "ids": ids, "models": models, "created": created, "usages": usages}))
