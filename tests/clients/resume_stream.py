"""Reads the first events of a streamed chat answer through the edge, drops the connection, and
resumes the stream from where it stopped, as a client library would; prints what it saw as one
JSON object for tests/resumable.rs.

usage: resume_stream.py BASE_URL MODE MODEL MAX_TOKENS READ_FIRST API_KEY
  BASE_URL    e.g. http://127.0.0.1:8080/v1
  MODE        how the first half is read and how the stream is resumed:
                get     httpx; GET {BASE_URL}/okome/streams/{id} with Last-Event-ID
                query   httpx; GET .../streams/{id}?cursor=N (and a stale Last-Event-ID: 0,
                        which the query overrides)
                repost  httpx; the same POST again with x-okome-stream-id and Last-Event-ID,
                        as fetch-event-source re-sends it
                openai  the official `openai` client reads the first half (its stream has no
                        event ids: the cursor is the number of chunks it yielded); GET to resume
  READ_FIRST  events to read before dropping the connection

Output: {"stream_id", "resume_status", "resume_content_type", "resume_stream_id",
"first": [[id, data], ...], "resumed": [[id, data], ...]} where id is the event's `id:` (null
when it had none) and data its `data:` text.
"""

import json
import sys

import httpx

base, mode, model = sys.argv[1], sys.argv[2], sys.argv[3]
max_tokens, read_first, key = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
body = {
    "model": model,
    "max_tokens": max_tokens,
    "stream": True,
    "messages": [{"role": "user", "content": "tell me a story"}],
}
auth = {"Authorization": f"Bearer {key}"}


def events(response):
    """The SSE events of an httpx streaming response, as (id, data) pairs."""
    ev_id, data = None, []
    for line in response.iter_lines():
        if line == "":
            if ev_id is not None or data:
                yield (int(ev_id) if ev_id is not None else None, "\n".join(data))
            ev_id, data = None, []
        elif line.startswith("id:"):
            ev_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def first_half_httpx():
    """POSTs the chat request, reads READ_FIRST events, drops the connection."""
    seen = []
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{base}/chat/completions", json=body, headers=auth) as r:
            r.raise_for_status()
            sid = r.headers.get("x-okome-stream-id")
            for ev in events(r):
                seen.append(ev)
                if len(seen) == read_first:
                    break
    # Leaving the `with` blocks closes the half-read response's connection.
    return sid, seen


def first_half_openai():
    """The official client reads READ_FIRST chunks; its response is closed mid-stream."""
    import openai

    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    seen = []
    with client.chat.completions.with_streaming_response.create(**body) as r:
        sid = r.headers.get("x-okome-stream-id")
        for chunk in r.parse():
            # One chunk per SSE event: the cursor is the count.
            seen.append((len(seen) + 1, chunk.model_dump_json()))
            if len(seen) == read_first:
                break
    client.close()
    return sid, seen


sid, first = first_half_openai() if mode == "openai" else first_half_httpx()
cursor = first[-1][0]
with httpx.Client(timeout=30) as client:
    headers = dict(auth)
    if mode in ("get", "openai"):
        headers["Last-Event-ID"] = str(cursor)
        req = client.build_request("GET", f"{base}/okome/streams/{sid}", headers=headers)
    elif mode == "query":
        headers["Last-Event-ID"] = "0"
        url = f"{base}/okome/streams/{sid}?cursor={cursor}"
        req = client.build_request("GET", url, headers=headers)
    elif mode == "repost":
        headers["Last-Event-ID"] = str(cursor)
        headers["x-okome-stream-id"] = sid
        url = f"{base}/chat/completions"
        req = client.build_request("POST", url, json=body, headers=headers)
    else:
        sys.exit(f"unknown mode {mode}")
    r = client.send(req, stream=True)
    resumed = list(events(r)) if r.status_code == 200 else []
    r.close()
print(
    json.dumps(
        {
            "stream_id": sid,
            "resume_status": r.status_code,
            "resume_content_type": r.headers.get("content-type"),
            "resume_stream_id": r.headers.get("x-okome-stream-id"),
            "first": first,
            "resumed": resumed,
        }
    )
)
