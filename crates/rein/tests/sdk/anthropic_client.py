"""The official `anthropic` SDK against rein's gateway (`/v1/messages`), as Claude Code or an
agent written with the SDK would call it.

Usage: anthropic_client.py BASE_URL AGENT_TOKEN
"""

import sys

import anthropic

BASE, TOKEN = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=BASE, api_key=TOKEN, max_retries=0)
TOOLS = [{"name": n, "description": n, "input_schema": {"type": "object", "properties": {}}}
         for n in ["orders_lookup", "send_email", "delete_customer"]]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def ask(messages, stream):
    if stream:
        with client.messages.stream(model="gateway", max_tokens=512, messages=messages, tools=TOOLS,
                                    system="You are a support agent.") as s:
            return s.get_final_message()
    return client.messages.create(model="gateway", max_tokens=512, messages=messages, tools=TOOLS,
                                  system="You are a support agent.")


for stream in (False, True):
    msgs = [{"role": "user", "content": f"Where is my order A-1001? (stream={stream})"}]
    m = ask(msgs, stream)
    uses = [b for b in m.content if b.type == "tool_use"]
    check([(u.name, u.input) for u in uses] == [("orders_lookup", {"order_id": "A-1001"})],
          f"the allowed tool_use arrives intact (stream={stream}): {m.content}")
    check(m.stop_reason == "tool_use", f"stop_reason tool_use: {m.stop_reason}")
    msgs += [{"role": "assistant", "content": m.content},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                           "content": '{"status": "shipped"}'}]}]
    m = ask(msgs, stream)
    check([b.text for b in m.content if b.type == "text"] == ["Order A-1001 shipped yesterday."]
          and m.stop_reason == "end_turn", f"the final answer (stream={stream}): {m.content}")

    m = ask([{"role": "user", "content": f"please delete lee (stream={stream})"}], stream)
    names = [b.name for b in m.content if b.type == "tool_use"]
    check(names == ["orders_lookup"], f"the denied tool_use is withheld, the allowed one arrives: {names}")
    text = "".join(b.text for b in m.content if b.type == "text")
    check("delete_customer" in text and "never-delete-customers" in text,
          f"the answer names the refused call and the policy: {text!r}")

# An endpoint the gateway does not serve (Claude Code asks for token counts) is refused in the
# API's own shape: the SDK raises its usual exception, with rein's words.
try:
    client.messages.count_tokens(model="gateway", messages=[{"role": "user", "content": "hi"}])
    check(False, "token counting is not served")
except anthropic.NotFoundError as e:
    check("does not serve POST /v1/messages/count_tokens" in e.message,
          f"the 404 says what is served: {e.message!r}")

print("ok")
