"""The OpenAI Agents SDK (``openai-agents``) runs an agent with one function tool against IIR,
end to end: on its default Responses API model and on its chat completions model, on a provider
that answers natively (OpenAI's Responses API) and on ones IIR translates for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from ..harness import Server
from .fakes import FakeProvider

set_tracing_disabled(True)  # nothing may leave the box for OpenAI's trace collector


@pytest.mark.parametrize("api", ["responses", "chat"])
@pytest.mark.parametrize(
    "model", ["openai/fake-large", "openllama/fake-small", "anthropic/claude-x"]
)
def test_an_agent_with_one_tool_runs_end_to_end(
    api: str, model: str, iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    async def run() -> Any:
        client = AsyncOpenAI(base_url=iir.url + "/v1", api_key=iir.key, max_retries=0)
        llm = (
            OpenAIResponsesModel(model=model, openai_client=client)
            if api == "responses"
            else OpenAIChatCompletionsModel(model=model, openai_client=client)
        )
        agent = Agent(
            name="forecaster", instructions="Use the tool.", model=llm, tools=[get_weather]
        )
        try:
            return await Runner.run(agent, "What is the weather in Paris?")
        finally:
            await client.close()

    result = asyncio.run(run())
    assert calls == ["Paris"]  # the model's tool call reached the tool, through IIR
    assert isinstance(result.final_output, str) and result.final_output.startswith("You said:")
    # The tool's answer went back to the model in the second turn.
    sent = fakes[model.split("/")[0]].chat_requests()
    assert len(sent) == 2 and "sunny in Paris" in str(sent[-1].body)
    if api == "responses" and model.startswith("openai/"):
        assert sent[-1].path == "/v1/responses"
