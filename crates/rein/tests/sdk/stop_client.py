"""The official `anthropic` and `openai` SDKs reading an answer an Anthropic model stopped at one
of the client's stop texts, through rein's gateway: the Messages API says `stop_sequence` and
which text, streamed or not; Chat Completions says `stop`. An answer that ended on its own says
`end_turn` with no stop text, as does one whose upstream named a text the client never gave.

Usage: stop_client.py BASE_URL AGENT_TOKEN
"""

from gateway_clients import an, check, oa

ask = [{"role": "user", "content": "list them"}]

m = an.messages.create(model="gw", max_tokens=50, stop_sequences=["###"], messages=ask)
check(m.stop_reason == "stop_sequence" and m.stop_sequence == "###", f"messages: {m}")
check(m.content[0].text == "a, b", f"messages text: {m}")

with an.messages.stream(model="gw", max_tokens=50, stop_sequences=["###"], messages=ask) as s:
    final = s.get_final_message()
check(final.stop_reason == "stop_sequence" and final.stop_sequence == "###", f"streamed: {final}")

r = oa.chat.completions.create(model="gw", messages=ask, stop=["###"])
check(r.choices[0].finish_reason == "stop", f"chat: {r}")
check(r.choices[0].message.content == "a, b", f"chat text: {r}")

for what in ["ended on its own", "a stop text never given"]:
    m = an.messages.create(model="gw", max_tokens=50, stop_sequences=["###"], messages=ask)
    check(m.stop_reason == "end_turn" and m.stop_sequence is None, f"{what}: {m}")

print("ok")
