"""The official `openai` and `anthropic` SDKs parsing a structured answer (`parse()`, streamed and
not) through rein's gateway when rein withheld a call the model proposed beside it: the JSON the
model wrote parses, and rein's note about the withheld call is where each API puts a refusal
(Chat Completions' `refusal`, a Responses `refusal` part, the Messages API's `stop_details`),
never inside the JSON (the `openai` SDK then leaves Chat Completions' `parsed` unset, as beside any
refusal, and the content is the JSON alone). Without a structured format the note follows the text, as before.

Usage: structured_client.py BASE_URL AGENT_TOKEN

The upstream answers each request in turn with the JSON text `{"order_id": "A1"}` and a call of
`drop_tables`, a tool the operator does not know, except the third and the eighth, which carry
the refused call alone.
"""

import openai
import pydantic

from gateway_clients import an, check, oa


class Order(pydantic.BaseModel):
    order_id: str


class orders_lookup(pydantic.BaseModel):  # noqa: N801 (the tool's name)
    order_id: str


MESSAGES = [{"role": "user", "content": "which order?"}]
# parse() takes strict function tools only.
TOOLS = [openai.pydantic_function_tool(orders_lookup)]


def refused(note):
    return note is not None and "drop_tables" in note and "withheld" in note


# 1. Chat Completions, parsed. The SDK leaves `parsed` unset beside a refusal, as for any
# refusal; the content is the model's JSON alone, and parses.
r = oa.chat.completions.parse(model="gw", messages=MESSAGES, tools=TOOLS, response_format=Order)
m = r.choices[0].message
check(m.content == '{"order_id": "A1"}', f"chat content is the model's JSON alone: {m.content!r}")
check(Order.model_validate_json(m.content) == Order(order_id="A1"), f"chat content: {r}")
check(refused(m.refusal), f"chat refusal names the withheld call: {m.refusal!r}")
check(not m.tool_calls, f"the refused call reached the client: {m.tool_calls}")

# 2. Chat Completions, streamed and parsed.
with oa.chat.completions.stream(model="gw", messages=MESSAGES, tools=TOOLS, response_format=Order) as s:
    final = s.get_final_completion()
m = final.choices[0].message
check(m.content == '{"order_id": "A1"}', f"streamed chat content: {final}")
check(refused(m.refusal), f"streamed chat refusal: {m.refusal!r}")
check(not m.tool_calls, f"the refused call reached the streaming client: {m.tool_calls}")

# 3. Chat Completions, the refused call alone: nothing to parse, and no error.
r = oa.chat.completions.parse(model="gw", messages=MESSAGES, tools=TOOLS, response_format=Order)
m = r.choices[0].message
check(m.parsed is None and m.content is None, f"chat with nothing left: {r}")
check(refused(m.refusal) and r.choices[0].finish_reason == "stop", f"chat refusal alone: {r}")

# 4. Responses, parsed; the response repeats the request's own settings.
r = oa.responses.parse(model="gw", input="which order?", store=False, text_format=Order,
                       tools=[{"type": "function", "name": "orders_lookup", "parameters": {"type": "object", "properties": {}}, "strict": False}],
                       parallel_tool_calls=False, tool_choice="auto", temperature=0.5)
check(r.output_parsed == Order(order_id="A1"), f"responses parsed: {r}")
parts = [p.type for p in r.output[0].content]
check(parts == ["output_text", "refusal"], f"responses parts: {parts}")
check(refused(r.output[0].content[1].refusal), f"responses refusal: {r.output[0].content[1]}")
check(all(o.type != "function_call" for o in r.output), f"the refused call reached the client: {r.output}")
check(r.parallel_tool_calls is False and r.temperature == 0.5, f"responses echo: {r}")
check(r.text.format.type == "json_schema" and r.tools[0].name == "orders_lookup", f"responses echo: {r}")

# 5. Responses, streamed and parsed.
with oa.responses.stream(model="gw", input="which order?", store=False, text_format=Order) as s:
    kinds = [e.type for e in s]
    final = s.get_final_response()
check(final.output_parsed == Order(order_id="A1"), f"streamed responses parsed: {final}")
check("response.refusal.done" in kinds, f"streamed responses events: {kinds}")
check(refused(final.output[0].content[1].refusal), f"streamed responses refusal: {final.output}")

# 6. Messages, parsed.
m = an.messages.parse(model="gw", max_tokens=50, messages=MESSAGES, output_format=Order)
check(m.parsed_output == Order(order_id="A1"), f"messages parsed: {m}")
check([b.type for b in m.content] == ["text"] and m.stop_reason == "end_turn", f"messages: {m}")
check(m.stop_details is not None and refused(m.stop_details.explanation), f"messages stop_details: {m}")

# 7. Messages, streamed and parsed.
with an.messages.stream(model="gw", max_tokens=50, messages=MESSAGES, output_format=Order) as s:
    final = s.get_final_message()
check(final.parsed_output == Order(order_id="A1"), f"streamed messages parsed: {final}")
check(final.stop_details is not None and refused(final.stop_details.explanation), f"streamed stop_details: {final}")

# 8. Messages, the refused call alone: the API's refusal.
m = an.messages.parse(model="gw", max_tokens=50, messages=MESSAGES, output_format=Order)
check(m.content == [] and m.parsed_output is None and m.stop_reason == "refusal", f"messages with nothing left: {m}")
check(refused(m.stop_details.explanation), f"messages refusal alone: {m}")

# 9. No structured format: the note follows the model's text, where the agent's model reads it.
r = oa.chat.completions.create(model="gw", messages=MESSAGES, tools=TOOLS)
m = r.choices[0].message
check(m.content.startswith('{"order_id": "A1"}\n\n') and refused(m.content), f"free text: {m.content!r}")
check(m.refusal is None, f"free text refusal: {m.refusal!r}")

print("ok")
