"""The baseline: how a straightforward implementation would do the same job.

What a careful engineer writes first: `json.loads` per record, plain dicts, a
full history aligned by list membership, one `POST /conversations` per
completed conversation through a default `aiohttp.ClientSession` (its default
connector, no pooling tuning), posts started as tasks so the loop keeps reading
(`--inline` awaits each post where it is made instead: simpler, and slower).
It is correct enough to be fair: duplicates are skipped, roles and tool
results map as the API wants (the harness checks its bodies against the strict
payload decoder), conversations are sent on `conversation.ended` and, at the
end of the input, every one still open; offsets are committed once all posts
have succeeded. It keeps no state outside the process and does not retry.

    python bench/straightforward.py --bootstrap-servers H:P --topic T --group G \
        --expect N --api-base-url http://127.0.0.1:8900
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer
from bare import Steady, peak_rss_kb

Conversation = dict[str, Any]


def new_conversation(conversation_id: str) -> Conversation:
    return {
        "id": conversation_id,
        "seen": set(),
        "messages": [],
        "created": [],
        "reply_properties": [],
        "meta": {},
        "first": None,
        "last": None,
    }


def apply(conversation: Conversation, event: dict[str, Any]) -> bool:
    """Adds one event; returns True when the conversation is complete."""
    if event["event_id"] in conversation["seen"]:
        return False
    conversation["seen"].add(event["event_id"])
    at = event["occurred_at"]
    conversation["first"] = conversation["first"] or at
    conversation["last"] = at
    merge(conversation["meta"], event.get("conversation") or {})
    if event["event_type"] == "conversation.ended":
        return True
    messages = conversation["messages"]
    for message in event["request"]["messages"]:
        if event.get("history") == "delta" or message not in messages:
            messages.append(message)
            conversation["created"].append(at)
            conversation["reply_properties"].append(None)
    choices = (event.get("response") or {}).get("choices") or []
    if choices and choices[0].get("message"):
        response = event["response"]
        messages.append(choices[0]["message"])
        conversation["created"].append(at)
        conversation["reply_properties"].append(
            {
                "model": response.get("model"),
                "finish_reason": choices[0].get("finish_reason"),
                "usage": response.get("usage"),
                "completion_id": response.get("id"),
                "latency_ms": event.get("latency_ms"),
            }
        )
    return False


def merge(meta: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key in ("properties", "user_properties"):
            meta.setdefault(key, {}).update(value)
        elif key == "tags":
            tags = meta.setdefault("tags", [])
            tags.extend(tag for tag in value if tag not in tags)
        else:
            meta[key] = value


def body(conversation: Conversation) -> bytes:
    """The `CreateOpenAIConversation` request body."""
    out: list[dict[str, Any]] = []
    by_call: dict[str, dict[str, Any]] = {}
    cid = conversation["id"]
    rows = zip(
        conversation["messages"],
        conversation["created"],
        conversation["reply_properties"],
        strict=True,
    )
    for index, (message, at, properties) in enumerate(rows):
        role = message["role"]
        if role in ("tool", "function"):
            owner = by_call.get(message.get("tool_call_id", ""))
            result = {"tool_call_id": message.get("tool_call_id"), "content": message["content"]}
            if owner is not None:
                owner.setdefault("properties", {}).setdefault("tool_results", []).append(result)
            continue
        item: dict[str, Any] = {
            "id": f"{cid}-{index}",
            "role": "system" if role == "developer" else role,
            "content": content(message.get("content")),
            "createdAt": at,
        }
        if message.get("tool_calls"):
            item["tool_calls"] = message["tool_calls"]
            for call in message["tool_calls"]:
                by_call[call["id"]] = item
        if properties is not None:
            item["properties"] = dict(properties)
        out.append(item)
    meta = conversation["meta"]
    document: dict[str, Any] = {
        "id": cid,
        "type": "openai",
        "messages": out,
        "createdAt": conversation["first"],
        "updatedAt": conversation["last"],
    }
    names = {"user_properties": "userProperties", "external_url": "externalUrl"}
    for key, value in meta.items():
        document[names.get(key, key)] = value
    return json.dumps(document).encode()


def content(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    parts = []
    for part in value:
        if part["type"] == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
            parts.append({"type": "image_url", "image_url": part["image_url"]})
        else:
            parts.append({"type": "text", "text": f"[{part['type']}]"})
    return parts


async def run(args: argparse.Namespace) -> dict[str, float]:
    began = time.monotonic()
    url = f"{args.api_base_url.rstrip('/')}/conversations"
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    failures = 0

    async def post(session: aiohttp.ClientSession, data: bytes) -> None:
        nonlocal failures
        async with session.post(url, data=data, headers=headers) as answer:
            await answer.read()
            if answer.status != 200:
                failures += 1

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    conversations: dict[str, Conversation] = {}
    posts: set[asyncio.Task[None]] = set()
    seen = 0
    first = Steady()
    try:
        async with aiohttp.ClientSession() as session:
            while seen < args.expect:
                batch = await consumer.getmany(timeout_ms=500)
                if batch:
                    first.mark()
                for records in batch.values():
                    for record in records:
                        seen += 1
                        event = json.loads(record.value)
                        cid = event["conversation_id"]
                        conversation = conversations.get(cid) or new_conversation(cid)
                        conversations[cid] = conversation
                        if apply(conversation, event):
                            del conversations[cid]
                            if not conversation["messages"]:
                                continue  # a late duplicate of an end: nothing to send
                            if args.inline:
                                await post(session, body(conversation))
                                continue
                            task = asyncio.create_task(post(session, body(conversation)))
                            posts.add(task)
                            task.add_done_callback(posts.discard)
            for conversation in conversations.values():
                posts.add(asyncio.create_task(post(session, body(conversation))))
            await asyncio.gather(*posts)
        await consumer.commit()
    finally:
        await consumer.stop()
    return {
        "records": seen,
        "failures": failures,
        "seconds": time.monotonic() - began,
        "peak_rss_kb": peak_rss_kb(),
        **first.result(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="straightforward baseline")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--api-base-url", required=True)
    parser.add_argument("--inline", action="store_true", help="await each post where it is made")
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
