"""Reformatting a request for an expert."""

from __future__ import annotations

from expertmesh.config import ExpertConfig
from expertmesh.experts.prompts import ExpertPrompt


def prompt(system: str = "You are a doctor.", template: str = "Question ({domain}): {query}") -> ExpertPrompt:
    config = ExpertConfig(name="medical", domains=["medical"], backend="embedded", model="m",
                          system_prompt=system, user_template=template)  # fmt: skip
    return ExpertPrompt(config)


def test_system_prompt_first_and_last_user_turn_templated():
    messages = [
        {"role": "user", "content": "I have a headache."},
        {"role": "assistant", "content": "Since when?"},
        {"role": "user", "content": "Two days {really}"},
    ]
    out = prompt().format(messages)
    assert out[0] == {"role": "system", "content": "You are a doctor."}
    assert out[1] == messages[0] and out[2] == messages[1]  # history untouched
    assert out[3] == {"role": "user", "content": "Question (medical): Two days {really}"}  # braces kept


def test_callers_system_messages_are_merged_into_one():
    out = prompt().format([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert out[0] == {"role": "system", "content": "You are a doctor.\n\nBe brief."}
    assert len([m for m in out if m["role"] == "system"]) == 1


def test_no_system_prompt_and_text_parts():
    out = prompt(system="", template="{query}").format(
        [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]}]
    )
    assert out == [{"role": "user", "content": "part one\ntwo"}]


def test_domain_from_the_router_is_used_in_the_template():
    out = prompt().format([{"role": "user", "content": "q"}], domain="science")
    assert out[-1]["content"] == "Question (science): q"


def test_models_without_a_system_role_get_it_in_the_first_user_turn():
    config = ExpertConfig(name="legal", domains=["legal"], backend="embedded", model="saul",
                          system_prompt="You are a lawyer.", system_role=False)  # fmt: skip
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is a verbal lease valid?"},
        {"role": "assistant", "content": "Often, yes."},
        {"role": "user", "content": "For how long?"},
    ]
    out = ExpertPrompt(config).format(messages)
    assert [m["role"] for m in out] == ["user", "assistant", "user"]  # roles alternate, as Mistral demands
    assert out[0]["content"] == "You are a lawyer.\n\nBe brief.\n\nIs a verbal lease valid?"
    assert out[2]["content"] == "For how long?"


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def test_images_in_the_last_user_turn_follow_its_templated_text():
    out = prompt().format([{"role": "user", "content": [{"type": "text", "text": "Is this rash serious?"}, IMAGE]}])
    assert out[-1] == {
        "role": "user",
        "content": [{"type": "text", "text": "Question (medical): Is this rash serious?"}, IMAGE],
    }


def test_images_survive_the_system_text_moving_into_the_first_user_turn():
    config = ExpertConfig(name="legal", domains=["legal"], backend="embedded", model="saul",
                          system_prompt="You are a lawyer.", system_role=False)  # fmt: skip
    out = ExpertPrompt(config).format(
        [{"role": "user", "content": [IMAGE, {"type": "text", "text": "Is this lease valid?"}]}]
    )
    assert out == [
        {"role": "user", "content": [{"type": "text", "text": "You are a lawyer.\n\nIs this lease valid?"}, IMAGE]}
    ]
