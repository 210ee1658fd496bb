"""The 2 MB rule: cut the largest contents just enough, mark every cut, never lose the shape."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from consumer import payload
from consumer.errors import CannotFit
from consumer.fit import MARK, fit

CUT = re.compile(r"…\[truncated: kept (\d+) of (\d+) characters\]\Z")


def message(index: int, content: Any, **extra: Any) -> payload.OutMessage:
    return payload.OutMessage(id=f"m{index}", role="user", content=content, **extra)


def conversation(*messages: payload.OutMessage, **extra: Any) -> payload.Conversation:
    return payload.Conversation(id="c", type="openai", messages=list(messages), **extra)


def fitted(value: payload.Conversation, limit: int) -> dict[str, Any]:
    cut, body, truncated = fit(value, limit)
    assert truncated
    assert len(body) <= limit
    assert payload.encode(cut) == body
    payload.decode(body)  # Still the API's schema.
    return json.loads(body)


def kept(text: str, original: str) -> int:
    found = CUT.search(text)
    assert found is not None, text
    count, whole = int(found.group(1)), int(found.group(2))
    assert whole == len(original)
    assert text[: found.start()] == original[:count]
    return count


def test_a_body_within_the_limit_is_returned_as_is():
    value = conversation(message(0, "hello"))
    cut, body, truncated = fit(value, 1000)
    assert cut is value
    assert body == payload.encode(value)
    assert not truncated


def test_only_the_largest_content_is_cut_and_just_enough():
    big, medium = "x" * 300_000, "y" * 100_000
    value = conversation(
        message(0, big),
        message(1, medium),
        message(2, "small"),
        properties={"app": "docs"},
    )
    limit = 350_000
    document = fitted(value, limit)
    contents = [m["content"] for m in document["messages"]]
    assert contents[1:] == [medium, "small"]
    count = kept(contents[0], big)
    assert count > 240_000  # Just enough: about 50 KB over, not much more cut.
    assert document["properties"]["app"] == "docs"
    assert document["properties"][MARK] == {
        "original_bytes": len(payload.encode(value)),
        "max_bytes": limit,
        "cut_items": 1,
    }


def test_several_large_contents_are_cut_to_a_common_cap():
    value = conversation(message(0, "a" * 200_000), message(1, "b" * 150_000), message(2, "c"))
    document = fitted(value, 100_000)
    first, second, third = (m["content"] for m in document["messages"])
    assert third == "c"
    counts = kept(first, "a" * 200_000), kept(second, "b" * 150_000)
    assert abs(counts[0] - counts[1]) < 100


def test_parts_tool_arguments_and_tool_results_are_cut_too():
    calls = [
        payload.ToolCall(
            id="k",
            function=payload.ToolCallFunction(name="f", arguments="{" + "1" * 90_000 + "}"),
        )
    ]
    value = conversation(
        message(0, [payload.ContentItem(type="text", text="t" * 90_000)]),
        payload.OutMessage(
            id="m1",
            role="assistant",
            content="",
            tool_calls=calls,
            properties={"tool_results": [{"tool_call_id": "k", "content": "r" * 90_000}]},
        ),
    )
    document = fitted(value, 60_000)
    kept(document["messages"][0]["content"][0]["text"], "t" * 90_000)
    arguments = document["messages"][1]["tool_calls"][0]["function"]["arguments"]
    kept(arguments, "{" + "1" * 90_000 + "}")
    kept(document["messages"][1]["properties"]["tool_results"][0]["content"], "r" * 90_000)
    assert document["properties"][MARK]["cut_items"] == 3


def test_a_huge_data_image_becomes_a_text_part_naming_it():
    url = "data:image/png;base64," + "A" * 500_000
    value = conversation(
        message(
            0,
            [
                payload.ContentItem(type="text", text="see"),
                payload.ContentItem(type="image_url", image_url=payload.ImageURL(url=url)),
                payload.ContentItem(
                    type="image_url", image_url=payload.ImageURL(url="https://x/y.png")
                ),
            ],
        )
    )
    document = fitted(value, 10_000)
    assert document["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {
            "type": "text",
            "text": f"[image removed: data:image/png;base64… ({len(url)} characters)]",
        },
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}},
    ]


@pytest.mark.parametrize("unit", ["\x01", "é", "😀", '"'])
def test_escapes_and_multibyte_text_are_counted_in_bytes(unit):
    original = unit * 100_000
    document = fitted(conversation(message(0, original)), 50_000)
    kept(document["messages"][0]["content"], original)


def test_cutting_again_keeps_the_original_sizes():
    original = "z" * 400_000
    first, _, _ = fit(conversation(message(0, original)), 300_000)
    again = fitted(first, 100_000)
    assert kept(again["messages"][0]["content"], original) < 100_000
    assert again["properties"][MARK]["original_bytes"] == len(
        payload.encode(conversation(message(0, original)))
    )
    assert again["properties"][MARK]["max_bytes"] == 100_000


def test_a_conversation_of_the_default_limit_fits_two_megabytes():
    value = conversation(*(message(i, "w" * 300_000) for i in range(10)))
    document = fitted(value, payload.MAX_BODY_BYTES)
    assert len(document["messages"]) == 10


def test_too_many_messages_to_fit_is_rejected():
    value = conversation(*(message(i, "short") for i in range(2000)))
    with pytest.raises(CannotFit, match="cannot be cut"):
        fit(value, 10_000)
