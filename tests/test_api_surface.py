"""The endpoints OpenAI clients and load balancers probe, against fake experts on 127.0.0.1:
models.retrieve, /health, the legacy completions API and the Responses API (translated to chat
completions, and relayed to an expert that serves it), through the official `openai` SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from expertmesh.config import Config
from tests.conftest import fake_config, running_gateway


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)


def last_request(fake_expert) -> dict:
    return fake_expert[1].state.requests[-1]


# --- models and health ---------------------------------------------------------------------------


def test_models_retrieve_names_every_model_and_404s_the_unknown(fake_expert):
    config = fake_config(fake_expert[0], model_aliases={"openai/gpt-4o": "auto"})
    with running_gateway(config) as url:
        client = sdk(url)
        for model in ("auto", "medical", "openai/gpt-4o"):
            retrieved = client.models.retrieve(model)
            assert retrieved.id == model and retrieved.object == "model" and retrieved.owned_by == "expertmesh"
        listed = {m.id: m.created for m in client.models.list()}
        assert listed["medical"] == client.models.retrieve("medical").created  # one creation time
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("gpt-17")
    assert caught.value.body["code"] == "model_not_found" and "gpt-17" in caught.value.body["message"]


def test_health_as_vllm_and_load_balancers_spell_it(gateway_url):
    for path in ("/health", "/healthz"):
        response = httpx.get(f"{gateway_url}{path}")
        assert response.status_code == 200 and response.json() == {"status": "ok"}


# --- legacy completions ----------------------------------------------------------------------------


def test_completions_are_routed_on_the_prompt_and_relayed_as_is(gateway_url, fake_expert):
    completion = sdk(gateway_url).completions.create(
        model="auto", prompt="Fever is a symptom of", max_tokens=30, seed=3
    )
    sent = last_request(fake_expert)
    assert sent["model"] == "medical-model" and sent["prompt"] == "Fever is a symptom of"  # no prompt format
    assert sent["seed"] == 3 and "messages" not in sent
    assert completion.choices[0].text == "[medical-model] Fever is a symptom of"
    assert completion.model_extra["expertmesh"]["expert"] == "medical" and completion.usage.total_tokens > 0


def test_completions_stream_with_the_decision_first(gateway_url):
    stream = sdk(gateway_url).completions.create(model="auto", prompt="a python function that sorts", stream=True)
    chunks = list(stream)
    assert chunks[0].model_extra["expertmesh"]["expert"] == "code"
    assert "".join(c.choices[0].text for c in chunks) == "[code-model] a python function that sorts"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_of_token_ids_need_a_named_expert(gateway_url, fake_expert):
    client = sdk(gateway_url)
    with pytest.raises(openai.BadRequestError, match="token ids cannot be routed"):
        client.completions.create(model="auto", prompt=[1, 2, 3])
    assert client.completions.create(model="math", prompt=[1, 2, 3]).choices[0].text == "[math-model] 1 2 3"
    response = httpx.post(f"{gateway_url}/v1/completions", json={"model": "auto"})
    assert response.status_code == 400 and "prompt" in response.json()["error"]["message"]


# --- the Responses API, translated to chat completions ---------------------------------------------


def test_responses_create_is_routed_and_answered_through_chat(gateway_url, fake_expert):
    response = sdk(gateway_url).responses.create(
        model="auto",
        input="which tax form do I need?",
        instructions="Answer briefly.",
        max_output_tokens=40,
        temperature=0.2,
        metadata={"ticket": "42"},
    )
    sent = last_request(fake_expert)
    assert sent["model"] == "finance-model" and sent["max_tokens"] == 40 and sent["temperature"] == 0.2
    assert sent["messages"] == [
        {"role": "system", "content": "You are the finance expert.\n\nAnswer briefly."},
        {"role": "user", "content": "[finance] which tax form do I need?"},
    ]
    assert response.output_text == "[finance-model] [finance] which tax form do I need?"
    assert response.status == "completed" and response.object == "response" and response.id.startswith("resp_")
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens == 7 and response.usage.total_tokens == 7 + response.usage.output_tokens
    assert response.metadata == {"ticket": "42"} and response.instructions == "Answer briefly."
    assert response.model_extra["expertmesh"]["expert"] == "finance"


def test_responses_stream_event_by_event(gateway_url):
    with httpx.stream(
        "POST",
        f"{gateway_url}/v1/responses",
        timeout=10,
        json={"model": "auto", "input": "is this contract valid?", "stream": True},
    ) as response:
        assert response.status_code == 200 and response.headers["x-expertmesh-expert"] == "legal"
        lines = [line for line in response.iter_lines() if line]
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [e["type"] for e in events] == kinds
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["expertmesh"]["expert"] == "legal"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert (
        text
        == "[legal-model] [legal] is this contract valid?"
        == events[-1]["response"]["output"][0]["content"][0]["text"]
    )
    assert events[-1]["response"]["usage"]["output_tokens"] > 0  # asked of the expert with include_usage


def test_the_sdks_stream_helper_accepts_the_events(gateway_url):
    client = sdk(gateway_url)
    with client.responses.stream(model="auto", input="what does this python error mean?") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert (
        "".join(deltas)
        == final.output_text
        == client.responses.create(model="auto", input="what does this python error mean?").output_text
    )


def test_responses_function_calls_both_ways(gateway_url, fake_expert):
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
    ]
    client = sdk(gateway_url)
    response = client.responses.create(
        model="general",
        input="[tool=lookup] define entropy",
        tools=tools,
        tool_choice={"type": "function", "name": "lookup"},
    )
    sent = last_request(fake_expert)
    function = {k: v for k, v in tools[0].items() if k != "type"}
    assert sent["tools"] == [{"type": "function", "function": {**function, "strict": True}}]  # the Responses default
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    call = response.output[0]
    assert call.type == "function_call" and call.name == "lookup" and call.call_id == "call_fake1"
    assert json.loads(call.arguments) == {"query": "[general] [tool=lookup] define entropy"}

    with client.responses.stream(model="general", input="[tool=lookup] define entropy", tools=tools) as stream:
        streamed = stream.get_final_response().output[0]
    assert streamed.type == "function_call" and streamed.arguments == call.arguments

    # The call and its output sent back: an assistant turn with the call, then the tool's answer.
    client.responses.create(
        model="general",
        tools=tools,
        input=[
            {"role": "user", "content": "define entropy"},
            {"type": "function_call", "call_id": "call_fake1", "name": "lookup", "arguments": call.arguments},
            {"type": "function_call_output", "call_id": "call_fake1", "output": "a measure of disorder"},
        ],
    )
    messages = last_request(fake_expert)["messages"]
    assert messages[-2]["tool_calls"][0] == {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": "lookup", "arguments": call.arguments},
    }
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_fake1", "content": "a measure of disorder"}


def test_responses_input_items_and_their_parts(gateway_url, fake_expert):
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}
    response = sdk(gateway_url).responses.create(
        model="auto",
        input=[
            {"role": "developer", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "what is this symptom?"}, image],
            },
        ],
    )
    assert response.model_extra["expertmesh"]["expert"] == "medical"
    messages = last_request(fake_expert)["messages"]
    assert messages[0] == {"role": "system", "content": "You are the medical expert.\n\nBe brief."}
    assert messages[1]["content"] == [
        {"type": "text", "text": "[medical] what is this symptom?"},
        {"type": "image_url", "image_url": {"url": image["image_url"], "detail": "low"}},
    ]


def test_a_response_cut_by_max_output_tokens_is_incomplete(gateway_url):
    client = sdk(gateway_url)
    response = client.responses.create(model="auto", input="one two three four five six", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    with client.responses.create(
        model="auto", input="one two three four five six", max_output_tokens=3, stream=True
    ) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"


def test_an_expert_that_dies_mid_stream_ends_it_with_response_failed(gateway_url):
    with sdk(gateway_url).responses.create(
        model="auto", input="[cut=3] tell me about this symptom", stream=True
    ) as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and "stream ended" in events[-1].response.error.message
    assert any(e.type == "response.output_text.delta" for e in events)


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]: items of type 'web_search_call'"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]: tool type 'web_search'"),
        ({"input": "hi", "previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0]"),
        ({"input": []}, "input"),
        ({}, "input"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"type": ["message"]}]}, "input[0].type: expected a string"),
        ({"input": [{"role": ["user"], "content": "hi"}]}, "input[0].role: expected one of"),
        ({"input": [{"role": "user", "content": [{"type": {"a": 1}}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": ["hi"]}]}, "input[0].content[0]: expected a content part"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
        ({"input": "hi", "text": {"format": "json"}}, "text.format: expected an object"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "hi", "tool_choice": {"type": "mcp"}}, "tool_choice"),
        ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ],
)
def test_what_the_responses_api_cannot_do_is_a_clear_400(gateway_url, fields, mentions):
    response = httpx.post(f"{gateway_url}/v1/responses", json={"model": "auto", **fields}, timeout=10)
    assert response.status_code == 400, response.text
    assert mentions in response.json()["error"]["message"]


def test_responses_through_a_failing_expert_are_openai_errors(gateway_url):
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway_url).responses.create(model="auto", input="[status=500] a symptom")
    assert caught.value.status_code == 502 and "medical" in caught.value.message


# --- the Responses API relayed to an expert that serves it ----------------------------------------


@pytest.fixture()
def native_gateway(fake_expert):
    raw = fake_config(fake_expert[0]).model_dump(mode="json")
    for expert in raw["experts"]:
        if expert["name"] == "legal":
            expert["responses_api"] = "native"
    with running_gateway(Config.model_validate(raw)) as url:
        yield url


def test_responses_relayed_to_an_expert_that_serves_them(native_gateway, fake_expert):
    response = sdk(native_gateway).responses.create(
        model="auto",
        input="is this contract binding?",
        instructions="Cite no cases.",
        reasoning={"effort": "low"},
        store=False,
    )
    sent = last_request(fake_expert)
    assert sent["model"] == "legal-model" and "instructions" not in sent and "messages" not in sent
    assert sent["input"] == [
        {"type": "message", "role": "system", "content": "You are the legal expert.\n\nCite no cases."},
        {"type": "message", "role": "user", "content": "[legal] is this contract binding?"},
    ]
    assert sent["reasoning"] == {"effort": "low"} and sent["store"] is False  # the rest as sent
    assert response.output_text == "[legal-model] [legal] is this contract binding?"
    assert response.model_extra["expertmesh"]["expert"] == "legal" and response.id == "resp_fake"


def test_relayed_response_streams_pass_through_with_the_decision(native_gateway):
    client = sdk(native_gateway)
    with client.responses.stream(model="auto", input="is this contract binding?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].type == "response.created" and events[0].response.model_extra["expertmesh"]["expert"] == "legal"
    assert final.output_text == "[legal-model] [legal] is this contract binding?"
    with client.responses.create(model="auto", input="[cut=1] is this contract binding?", stream=True) as stream:
        cut = list(stream)
    assert cut[-1].type == "error" and "ended before" in cut[-1].message


def test_previous_response_id_goes_only_to_a_named_expert_that_stores_responses(native_gateway, fake_expert):
    client = sdk(native_gateway)
    client.responses.create(model="legal", input="and the deposit?", previous_response_id="resp_fake")
    sent = last_request(fake_expert)
    assert sent["previous_response_id"] == "resp_fake"
    # The stored conversation has the expert's system prompt already: it is not sent again.
    assert sent["input"] == [{"type": "message", "role": "user", "content": "[legal] and the deposit?"}]
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="auto", input="and the deposit?", previous_response_id="resp_fake")


# --- streamed chat chunks as Responses events, checked by the SDK's own accumulator --------------


def call(index: int | None, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    function = {"arguments": arguments, **({"name": name} if name else {})}
    return {
        "delta": {
            "tool_calls": [
                {
                    **({"index": index} if index is not None else {}),
                    **({"id": call_id, "type": "function"} if call_id else {}),
                    "function": function,
                }
            ]
        }
    }


SCRIPTS = {
    "interleaved calls": [
        call(0, "c0", "f", '{"a":'),
        call(1, "c1", "g", '{"b":'),
        call(0, arguments="1}"),
        call(1, arguments="2}"),
        {"delta": {}, "finish_reason": "tool_calls"},
    ],
    "index 0 for every call": [
        call(0, "c0", "f", "{}"),
        call(0, "c1", "g", "{}"),
        {"delta": {}, "finish_reason": "tool_calls"},
    ],
    "no index, name repeated": [
        call(None, "c0", "f", '{"x"'),
        {"delta": {"tool_calls": [{"function": {"name": "f", "arguments": ":1}"}}]}},
        {"delta": {}, "finish_reason": "tool_calls"},
    ],
    "text between call deltas": [
        {"delta": {"content": "Let me check."}},
        call(0, "c0", "f", '{"q":'),
        {"delta": {"content": "\n"}},
        call(0, arguments='"x"}'),
        {"delta": {}, "finish_reason": "tool_calls"},
    ],
}
EXPECTED = {
    "interleaved calls": ("", [("c0", "f", '{"a":1}'), ("c1", "g", '{"b":2}')]),
    "index 0 for every call": ("", [("c0", "f", "{}"), ("c1", "g", "{}")]),
    "no index, name repeated": ("", [("c0", "f", '{"x":1}')]),
    "text between call deltas": ("Let me check.\n", [("c0", "f", '{"q":"x"}')]),
}


@pytest.fixture()
def scripted(fake_expert):
    """Set the stream the fake math expert sends; cleared afterwards."""
    rules = fake_expert[1].state.per_model

    def script(choices: list[dict]) -> None:
        rules["math-model"] = {"choices": choices}

    yield script
    rules.pop("math-model", None)


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_streamed_tool_calls_become_whole_function_call_items(gateway_url, scripted, case):
    scripted(SCRIPTS[case])
    with sdk(gateway_url).responses.stream(model="math", input="go") as stream:
        final = stream.get_final_response()
    text, calls = EXPECTED[case]
    assert final.output_text == text
    assert [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"] == calls
    assert all(i.status == "completed" for i in final.output)


def test_streamed_refusals_logprobs_and_empty_answers(gateway_url, scripted):
    client = sdk(gateway_url)
    scripted(
        [
            {"delta": {"refusal": "I can't "}},
            {"delta": {"refusal": "help with that."}},
            {"delta": {}, "finish_reason": "stop"},
        ]
    )
    with client.responses.stream(model="math", input="go") as stream:
        events = [event.type for event in stream]
        (message,) = stream.get_final_response().output
    assert message.content[0].type == "refusal" and message.content[0].refusal == "I can't help with that."
    assert "response.refusal.delta" in events and "response.refusal.done" in events

    entry = {
        "token": "4",
        "logprob": -0.01,
        "bytes": [52],
        "top_logprobs": [{"token": "4", "logprob": -0.01, "bytes": [52]}],
    }
    scripted([{"delta": {"content": "4"}, "logprobs": {"content": [entry]}}, {"delta": {}, "finish_reason": "length"}])
    with client.responses.stream(model="math", input="go", top_logprobs=1) as stream:
        last = list(stream)[-1]  # cut by the token limit: response.incomplete, as OpenAI ends such a stream
    assert last.type == "response.incomplete" and last.response.output[0].status == "incomplete"
    part = last.response.output[0].content[0]
    assert part.text == "4" and part.logprobs[0].token == "4" and part.logprobs[0].logprob == -0.01

    scripted([{"delta": {"role": "assistant", "content": ""}}, {"delta": {}, "finish_reason": "stop"}])
    with client.responses.stream(model="math", input="go") as stream:
        final = stream.get_final_response()
    assert final.output_text == "" and [item.type for item in final.output] == ["message"]  # as when not streamed


def test_a_stream_event_that_is_not_json_fails_the_response(gateway_url, scripted):
    scripted([{"delta": {"content": "partial"}}, "{not json"])
    with sdk(gateway_url).responses.create(model="math", input="go", stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.failed" and "not JSON" in events[-1].response.error.message
    assert events[-1].response.error.code == "server_error"  # one of the codes the API defines
    assert events[-1].response.output[0].content[0].text == "partial"
