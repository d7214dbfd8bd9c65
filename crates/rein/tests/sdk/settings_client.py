"""The official `openai` and `anthropic` SDKs sending their own model settings through rein's
gateway: sampling, a cap on the answer, stop texts, a tool choice and a structured output's
format, whether the model may call tools in parallel, a seed and a reasoning effort, on each of the
three APIs; and a setting that is no setting, refused naming its field.

Usage: settings_client.py BASE_URL AGENT_TOKEN

The test that runs it reads what the upstream received; this script checks what the clients
see. Exits non-zero on the first failure.
"""

import openai

from gateway_clients import an, check, oa


FN = {"type": "object", "properties": {"order_id": {"type": "string"}}}

r = oa.chat.completions.create(
    model="gw", messages=[{"role": "user", "content": "chat"}], temperature=0.25, top_p=0.5,
    max_completion_tokens=40, stop=["END"],
    tools=[{"type": "function", "function": {"name": "orders_lookup", "parameters": FN}}],
    tool_choice={"type": "function", "function": {"name": "orders_lookup"}},
    parallel_tool_calls=False, seed=7, reasoning_effort="low",
    response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": FN, "strict": True}})
check(r.choices[0].message.content == "ok", f"the chat answer: {r}")

m = an.messages.create(
    model="gw", max_tokens=30, stop_sequences=["STOP"],
    messages=[{"role": "user", "content": "messages"}],
    tools=[{"name": "orders_lookup", "input_schema": FN}], tool_choice={"type": "any", "disable_parallel_tool_use": True},
    output_config={"format": {"type": "json_schema", "schema": FN}})
check(m.content[0].text == "ok", f"the messages answer: {m}")

r = oa.responses.create(
    model="gw", input="responses", store=False, max_output_tokens=20, temperature=0,
    tools=[{"type": "function", "name": "orders_lookup", "parameters": FN}], tool_choice="none",
    parallel_tool_calls=True, reasoning={"effort": "high"},
    text={"format": {"type": "json_object"}})
check(r.output_text == "ok", f"the responses answer: {r}")

try:
    oa.chat.completions.create(model="gw", messages=[{"role": "user", "content": "bad"}],
                               extra_body={"stop": [1]})
    check(False, "a stop that is no text was taken")
except openai.BadRequestError as e:
    check("stop[0]" in str(e), f"the refusal names the field: {e}")

print("ok")
