"""The official `openai` and `anthropic` SDKs reading an answer the model stopped at its cap,
through rein's gateway: each API says so in its own words (Chat Completions `length`, the
Messages API `max_tokens`, the Responses API an `incomplete` response, streamed or not).

Usage: cut_client.py BASE_URL AGENT_TOKEN
"""

from gateway_clients import an, check, oa


r = oa.chat.completions.create(model="gw", messages=[{"role": "user", "content": "chat"}], max_tokens=5)
check(r.choices[0].finish_reason == "length", f"chat: {r}")
check(r.choices[0].message.content == "the answer was cu", f"chat text: {r}")

m = an.messages.create(model="gw", max_tokens=5, messages=[{"role": "user", "content": "messages"}])
check(m.stop_reason == "max_tokens", f"messages: {m}")

r = oa.responses.create(model="gw", input="responses", store=False, max_output_tokens=16)
check(r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", f"responses: {r}")
check(r.output_text == "the answer was cu", f"responses text: {r.output_text!r}")

# Streamed, the API ends with `response.incomplete` in place of `response.completed` (the
# SDK's get_final_response() then raises, as it does against OpenAI's own API).
with oa.responses.stream(model="gw", input="responses stream", store=False, max_output_tokens=16) as s:
    events = list(s)
kinds = [e.type for e in events]
check(kinds[-1] == "response.incomplete" and "response.completed" not in kinds, f"streamed events: {kinds}")
check(events[-1].response.incomplete_details.reason == "max_output_tokens", f"streamed end: {events[-1]}")

print("ok")
