"""The official openai client and LangChain's ChatOpenAI work against the gateway unchanged."""

from __future__ import annotations

import openai
import pytest
from langchain_openai import ChatOpenAI


def test_openai_client_non_streaming_and_streaming(gateway_url):
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "is this a tax question?"}]
    )
    assert completion.choices[0].message.content == "[finance-model] [finance] is this a tax question?"
    assert completion.model == "finance-model"
    assert completion.usage.total_tokens > 0
    assert completion.model_extra["expertmesh"]["expert"] == "finance"

    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "python please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[code-model] [code] python please"
    assert chunks[-1].usage.completion_tokens > 0

    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "a symptom"}]
    )
    assert raw.headers["x-expertmesh-expert"] == "medical"


def test_openai_client_sees_openai_errors(gateway_url):
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="gpt-17"):
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="auto", messages=[])
    assert [m.id for m in client.models.list()][0] == "auto"


async def _astream(llm: ChatOpenAI, text: str) -> str:
    return "".join([chunk.content async for chunk in llm.astream(text)])


def test_langchain_chat_openai(gateway_url):
    import asyncio

    llm = ChatOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", model="auto", max_retries=0)
    answer = llm.invoke("an integral, please")
    assert answer.content == "[math-model] [math] an integral, please"
    streamed = "".join(chunk.content for chunk in llm.stream("a contract clause"))
    assert streamed == "[legal-model] [legal] a contract clause"
    assert asyncio.run(_astream(llm, "a symptom")) == "[medical-model] [medical] a symptom"
